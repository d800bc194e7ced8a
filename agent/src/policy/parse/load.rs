//! Policy files to a policy set: the `*.yaml` and `*.yml` files below a directory, each
//! read whole up to a size limit, parsed (through the per-document cache) and checked as
//! a set. Every error of every file is reported, not just the first.

use std::path::{Path, PathBuf};

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
    let mut files = Vec::new();
    let mut errors = Vec::new();
    collect_files(dir, &mut files, &mut errors);
    files.sort();
    PolicyErrors::result(errors, files)
}

/// Reads every policy file below `dir` into one set; documents unchanged since the last
/// load with the same cache are not parsed again.
pub fn load_dir(dir: &Path, cache: &mut ParseCache) -> Result<PolicySet, PolicyErrors> {
    let files = policy_files(dir)?;
    if files.is_empty() {
        return Err(PolicyErrors(vec![PolicyError {
            file: dir.to_path_buf(),
            line: 0,
            message: "no policy files: expected *.yaml or *.yml files in this directory".into(),
        }]));
    }
    load_files(&files, cache)
}

/// Reads these files into one set: parses every document, expands pipelines and checks
/// the set as a whole. Every error of every file is reported, not just the first.
pub fn load_files(files: &[PathBuf], cache: &mut ParseCache) -> Result<PolicySet, PolicyErrors> {
    let mut errors = Vec::new();
    let mut set = PolicySet::default();
    for file in files {
        match read_file(file) {
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

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<PolicyError>) {
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
        if path.is_dir() {
            collect_files(&path, files, errors);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml")
        ) {
            files.push(path);
        }
    }
}

fn read_file(file: &Path) -> Result<String, PolicyError> {
    let err = |message: String| PolicyError {
        file: file.to_path_buf(),
        line: 0,
        message,
    };
    let size = std::fs::metadata(file)
        .map_err(|e| err(format!("cannot read: {e}")))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(err(format!(
            "file is {size} bytes; expected at most {MAX_FILE_BYTES} bytes of policy"
        )));
    }
    let bytes = std::fs::read(file).map_err(|e| err(format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| err(format!("not UTF-8 text: {e}")))
}
