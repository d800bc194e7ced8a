//! Policy files to a policy set: the `*.yaml` and `*.yml` files below a directory, each
//! read whole up to a size limit, parsed (through the per-document cache) and checked as
//! a set. Every error of every file is reported, not just the first.
//!
//! The directory is not trusted to be tidy: a symlink loop, a fifo or a device named
//! `*.yaml` is refused with an error naming it, and never hangs the load (or the agent's
//! once-a-second fingerprint of the directory, which lists and reads the same way).

use std::{
    collections::HashSet,
    fs::{Metadata, OpenOptions},
    io::Read as _,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use super::{
    cache::ParseCache,
    whole_set::{complete, validate_set},
};
use crate::policy::{
    error::{PolicyError, PolicyErrors},
    model::PolicySet,
};

/// Policy files larger than this are refused rather than read into memory.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The policy files below `dir`: every `*.yaml` and `*.yml`, recursively, sorted; hidden
/// files and directories (editors' swap files, a ConfigMap's `..data`) are skipped.
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyErrors> {
    let (files, errors) = list_files(dir);
    PolicyErrors::result(errors, files)
}

/// The policy files below `dir` as [`policy_files`] finds them, and an error for each
/// entry refused on the way (a directory that cannot be read, a symlink to a directory
/// already read): the files are still listed, so one bad entry does not hide the rest.
pub fn list_files(dir: &Path) -> (Vec<PathBuf>, Vec<PolicyError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let mut read = HashSet::new();
    if let Ok(meta) = std::fs::metadata(dir) {
        read.insert(dir_id(&meta));
    }
    collect_files(dir, &mut files, &mut errors, &mut read);
    files.sort();
    (files, errors)
}

/// Reads every policy file below `dir` into one set; documents unchanged since the last
/// load with the same cache are not parsed again.
pub fn load_dir(dir: &Path, cache: &mut ParseCache) -> Result<PolicySet, PolicyErrors> {
    let (files, errors) = list_files(dir);
    if files.is_empty() && errors.is_empty() {
        return Err(PolicyErrors(vec![PolicyError {
            file: dir.to_path_buf(),
            line: 0,
            message: "no policy files: expected *.yaml or *.yml files in this directory".into(),
        }]));
    }
    load(&files, errors, cache)
}

/// Reads these files into one set: parses every document, expands pipelines and checks
/// the set as a whole. Every error of every file is reported, not just the first.
pub fn load_files(files: &[PathBuf], cache: &mut ParseCache) -> Result<PolicySet, PolicyErrors> {
    load(files, Vec::new(), cache)
}

/// [`load_files`], adding to `errors` found before (while listing the files).
fn load(
    files: &[PathBuf],
    mut errors: Vec<PolicyError>,
    cache: &mut ParseCache,
) -> Result<PolicySet, PolicyErrors> {
    let mut set = PolicySet::default();
    for file in files {
        match read_policy_file(file) {
            Ok(text) => {
                if let Err(mut e) = cache.parse_into(file, &text, &mut set) {
                    errors.append(&mut e.0);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    cache.finish_load();
    if errors.is_empty() {
        errors = complete(&mut set);
    } else if let Err(mut e) = validate_set(&set) {
        errors.append(&mut e.0);
    }
    PolicyErrors::result(errors, set)
}

/// A directory's identity: a symlink that leads back to it is seen by this.
fn dir_id(meta: &Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// Lists `dir` into `files`. Symlinks are followed (a ConfigMap volume is made of them),
/// but each directory is read once (`read` holds those already read): a link back to one,
/// such as `a -> .`, would otherwise be walked again at every level, doubling with each
/// second link, and never finish.
fn collect_files(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    errors: &mut Vec<PolicyError>,
    read: &mut HashSet<(u64, u64)>,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(PolicyError {
                file: dir.to_path_buf(),
                line: 0,
                message: format!("cannot read policy directory: {e}"),
            });
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        // Editors' and Kubernetes ConfigMaps' hidden files (..data, .swp) are not policies.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        // A broken link is not a directory: if it is named like a policy, reading it
        // reports why it cannot be read.
        let meta = std::fs::metadata(&path).ok();
        if let Some(meta) = meta.filter(Metadata::is_dir) {
            if read.insert(dir_id(&meta)) {
                collect_files(&path, files, errors, read);
            } else {
                errors.push(PolicyError {
                    file: path,
                    line: 0,
                    message: "a link to a directory already read (a symlink loop, or a \
                              second path to it): not followed; expected each policy \
                              directory once"
                        .into(),
                });
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml")
        ) {
            files.push(path);
        }
    }
}

/// Reads one policy file: a regular file (or a symlink to one) of at most MAX_FILE_BYTES.
/// Opened non-blocking, so a fifo is refused at once instead of waiting for a writer; the
/// type is checked on the open file, and the bound counts the bytes actually read (a
/// device or a growing file says nothing true about its size in advance).
pub fn read_policy_file(file: &Path) -> Result<String, PolicyError> {
    let err = |message: String| PolicyError {
        file: file.to_path_buf(),
        line: 0,
        message,
    };
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(file)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    let meta = f.metadata().map_err(|e| err(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(err(format!(
            "not a regular file ({}); expected a policy file, or a symlink to one",
            file_kind(&meta)
        )));
    }
    let too_big = |size: String| {
        err(format!(
            "file is {size} bytes; expected at most {MAX_FILE_BYTES} bytes of policy"
        ))
    };
    // A file that says it is too big is refused before anything is read.
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big(meta.len().to_string()));
    }
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(format!("more than {MAX_FILE_BYTES}")));
    }
    String::from_utf8(bytes).map_err(|e| err(format!("not UTF-8 text: {e}")))
}

fn file_kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a fifo"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}
