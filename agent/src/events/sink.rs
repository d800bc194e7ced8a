//! Where the JSON-lines event log goes: stdout, or a file rotated by size (the current
//! file, then `.1` the newest old one up to `.N`), so a flood cannot fill the disk.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Stdout, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

pub enum Sink {
    Stdout(BufWriter<Stdout>),
    File(RotatingFile),
}

impl Sink {
    pub fn stdout() -> Sink {
        Sink::Stdout(BufWriter::new(io::stdout()))
    }

    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => {
                out.write_all(line)?;
                out.write_all(b"\n")
            }
            Sink::File(f) => f.write_line(line),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::File(f) => f.file.flush(),
        }
    }
}

pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: BufWriter<File>,
    written: u64,
}

impl RotatingFile {
    pub fn open(path: PathBuf, max_bytes: u64, keep: u32) -> io::Result<RotatingFile> {
        let file = open_log(&path, true)?;
        let written = file.metadata()?.len();
        Ok(RotatingFile {
            path,
            max_bytes,
            keep,
            file: BufWriter::new(file),
            written,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        name.into()
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.written > 0 && self.written + line.len() as u64 + 1 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.file.write_all(b"\n")?;
        self.written += line.len() as u64 + 1;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        if self.keep > 0 {
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.file = BufWriter::new(open_log(&self.path, false)?);
        self.written = 0;
        Ok(())
    }
}

/// Opens the event log at `path`, to append or (after a rotation) empty. Created 0600:
/// events name peers' addresses. Never through a symlink (O_NOFOLLOW): one planted at the
/// path would send root's writes to a file of someone else's choosing. An existing file
/// keeps its mode (the operator may have chosen it).
fn open_log(path: &Path, append: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW);
    if append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    options.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            io::Error::new(
                e.kind(),
                "is a symbolic link; expected a regular file (links are not followed)",
            )
        } else {
            e
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = std::env::temp_dir().join(format!("stagewall-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let mut f = RotatingFile::open(path.clone(), 100, 2).unwrap();
        for i in 0..30 {
            f.write_line(format!("{{\"n\":{i:04}}}").as_bytes())
                .unwrap();
        }
        f.file.flush().unwrap();
        let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) <= 100 && size(&path) > 0);
        assert!(size(&f.rotated(1)) > 0 && size(&f.rotated(2)) > 0);
        assert!(!f.rotated(3).exists(), "keeps 2 old files");
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.ends_with("{\"n\":0029}\n"), "{last}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn event_logs_and_rotated_ones_are_created_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("stagewall-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let mut f = RotatingFile::open(path.clone(), 100, 2).unwrap();
        for i in 0..10 {
            f.write_line(format!("{{\"n\":{i:04}}}").as_bytes())
                .unwrap();
        }
        f.file.flush().unwrap();
        // The current file was created after a rotation, `.1` before it.
        for p in [&path, &f.rotated(1)] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
        }

        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_symlink_planted_at_the_events_path_is_refused() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("stagewall-planted-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let elsewhere = dir.join("elsewhere");
        std::fs::write(&elsewhere, b"").unwrap();
        let link = dir.join("link.jsonl");
        symlink(&elsewhere, &link).unwrap();
        let e = RotatingFile::open(link, 100, 2)
            .err()
            .expect("a symlink at the events path is refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(
            std::fs::read(&elsewhere).unwrap(),
            b"",
            "nothing written through it"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
