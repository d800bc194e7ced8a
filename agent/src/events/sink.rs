//! Where the JSON-lines event log goes: stdout, or a file rotated by size (the current
//! file, then `.1` the newest old one up to `.N`), so a flood cannot fill the disk.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::{fd::AsFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// Lines are written out once this much is waiting, or when the kernel's ring buffer is
/// empty for now (`flush`).
const WRITE_AT: usize = 8 * 1024;

/// The event log: lines kept in a buffer of its own and written out whole. A write that
/// fails loses the lines waiting (says how many) and only them: the buffer is emptied, so
/// the next events are tried afresh and a full disk that frees up, or a reader that comes
/// back, gets them. A `BufWriter` would keep the failed bytes and fail again with them.
pub struct Sink {
    out: Output,
    lines: Lines,
}

enum Output {
    /// Stdout (a duplicate of fd 1, written without std's line buffering, whose partial
    /// writes could not be accounted for), or any other stream.
    Stream(Box<dyn Write + Send>),
    File(RotatingFile),
}

/// Lines that a failed write lost, and why it failed.
#[derive(Debug, thiserror::Error)]
#[error("writing events failed, {lines} lost")]
pub struct Lost {
    pub lines: u64,
    #[source]
    pub error: io::Error,
}

impl Sink {
    /// The event log on stdout.
    pub fn stdout() -> io::Result<Sink> {
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        Ok(Sink::stream(File::from(fd)))
    }

    /// The event log on any stream.
    pub fn stream(w: impl Write + Send + 'static) -> Sink {
        Sink {
            out: Output::Stream(Box::new(w)),
            lines: Lines::default(),
        }
    }

    /// The event log in a file rotated by size.
    pub fn file(file: RotatingFile) -> Sink {
        Sink {
            out: Output::File(file),
            lines: Lines::default(),
        }
    }

    /// Adds a line (without its newline); writes out what is waiting if that is a lot.
    pub fn write_line(&mut self, line: &[u8]) -> Result<(), Lost> {
        let mut result = Ok(());
        if let Output::File(f) = &mut self.out
            && f.full_with(self.lines.buf.len(), line.len() + 1)
        {
            // What is waiting goes to the current file, the line to the next one. Rotated
            // even if that write failed: dropping the oldest file may free the space.
            result = self.lines.write_to(f);
            if let Err(error) = f.rotate() {
                result = result.and(Err(Lost { lines: 0, error }));
            }
            // A new file: a line broken off in the old one has nothing to end here.
            self.lines.new_output();
        }
        self.lines.push(line);
        if result.is_ok() && self.lines.buf.len() >= WRITE_AT {
            result = self.flush();
        }
        result
    }

    /// Writes out the lines waiting.
    pub fn flush(&mut self) -> Result<(), Lost> {
        match &mut self.out {
            Output::Stream(w) => self.lines.write_to(w),
            Output::File(f) => self.lines.write_to(f),
        }
    }
}

/// Lines waiting to be written.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
    /// Lines in `buf`.
    count: u64,
    /// `buf` starts with the newline that ends a line a failed write broke off, so that
    /// the next line starts on a line of its own.
    ends_broken: bool,
}

impl Lines {
    fn push(&mut self, line: &[u8]) {
        self.buf.extend_from_slice(line);
        self.buf.push(b'\n');
        self.count += 1;
    }

    fn new_output(&mut self) {
        if self.ends_broken {
            self.buf.remove(0);
            self.ends_broken = false;
        }
    }

    /// Writes `buf` to `out` and empties it; on a failure says how many lines did not get
    /// out whole.
    fn write_to(&mut self, out: &mut impl Write) -> Result<(), Lost> {
        let mut written = 0;
        while written < self.buf.len() {
            match out.write(&self.buf[written..]) {
                Ok(0) => return Err(self.lose(written, io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.lose(written, e)),
            }
        }
        self.buf.clear();
        self.count = 0;
        self.ends_broken = false;
        Ok(())
    }

    /// Empties `buf` after a write that got only `written` bytes of it out: the lines not
    /// out whole are lost, and a line broken off is ended before the next.
    fn lose(&mut self, written: usize, error: io::Error) -> Lost {
        let done = &self.buf[..written];
        let whole = done.iter().filter(|&&b| b == b'\n').count() as u64
            - u64::from(self.ends_broken && written > 0);
        let broken = match done.last() {
            Some(&last) => last != b'\n',
            None => self.ends_broken,
        };
        let lost = Lost {
            lines: self.count - whole,
            error,
        };
        self.buf.clear();
        self.count = 0;
        self.ends_broken = broken;
        if broken {
            self.buf.push(b'\n');
        }
        lost
    }
}

pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: File,
    /// Bytes in the current file.
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
            file,
            written,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        name.into()
    }

    /// Whether `more` bytes would take the file past its size, once the `waiting` bytes
    /// are in it; a line goes into an empty file whatever its size.
    fn full_with(&self, waiting: usize, more: usize) -> bool {
        let used = self.written + waiting as u64;
        used > 0 && used + more as u64 > self.max_bytes
    }

    fn rotate(&mut self) -> io::Result<()> {
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        if self.keep > 0 {
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.file = open_log(&self.path, false)?;
        self.written = 0;
        Ok(())
    }
}

/// Counts what reaches the file, for rotation.
impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
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
    use std::sync::{Arc, Mutex};

    use super::*;

    fn rotated(path: &Path, n: u32) -> PathBuf {
        format!("{}.{n}", path.display()).into()
    }

    /// A disk that takes `room` bytes more (all it is given while None), then is full.
    #[derive(Clone, Default)]
    struct Disk {
        written: Arc<Mutex<Vec<u8>>>,
        room: Arc<Mutex<Option<usize>>>,
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            let n = room.map_or(buf.len(), |r| r.min(buf.len()));
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            if let Some(r) = room.as_mut() {
                *r -= n;
            }
            self.written.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A line broken off in a file that is then rotated away is not ended in the new one:
    /// the new file starts with a whole line.
    #[test]
    fn a_new_file_does_not_end_the_old_ones_broken_line() {
        let full = Disk::default();
        *full.room.lock().unwrap() = Some(3);
        let mut lines = Lines::default();
        lines.push(b"{\"n\":1}");
        assert_eq!(lines.write_to(&mut full.clone()).unwrap_err().lines, 1);
        lines.new_output();
        lines.push(b"{\"n\":2}");
        let next = Disk::default();
        lines.write_to(&mut next.clone()).unwrap();
        assert_eq!(*full.written.lock().unwrap(), b"{\"n");
        assert_eq!(*next.written.lock().unwrap(), b"{\"n\":2}\n");
    }

    /// ENOSPC (/dev/full): the lines waiting are lost and counted, and only they: the
    /// next write tries the next lines, not the failed ones again.
    #[test]
    fn a_full_disk_loses_the_lines_waiting_and_says_how_many() {
        let full = File::options().write(true).open("/dev/full").unwrap();
        let mut sink = Sink::stream(full);
        for i in 0..3 {
            sink.write_line(format!("{{\"n\":{i}}}").as_bytes())
                .unwrap();
        }
        let lost = sink.flush().expect_err("/dev/full is full");
        assert_eq!(lost.lines, 3);
        assert_eq!(lost.error.raw_os_error(), Some(libc::ENOSPC));
        sink.write_line(b"{}").unwrap();
        assert_eq!(sink.flush().expect_err("still full").lines, 1);
    }

    /// A disk full partway through a line, then freed: the broken line is ended before
    /// the next, and every line written after is whole.
    #[test]
    fn a_disk_that_fills_then_frees_gets_whole_lines_after() {
        let disk = Disk::default();
        *disk.room.lock().unwrap() = Some(12);
        let mut sink = Sink::stream(disk.clone());
        for n in 1..=3 {
            sink.write_line(format!("{{\"n\":{n}}}").as_bytes())
                .unwrap();
        }
        // 8 bytes a line: the first whole, 4 bytes of the second.
        let lost = sink.flush().expect_err("the disk filled");
        assert_eq!(lost.lines, 2, "the broken line and the one after it");
        // Still full: nothing more is lost than what waits.
        sink.write_line(b"{\"n\":4}").unwrap();
        assert_eq!(sink.flush().expect_err("still full").lines, 1);

        *disk.room.lock().unwrap() = None;
        for n in 5..=6 {
            sink.write_line(format!("{{\"n\":{n}}}").as_bytes())
                .unwrap();
        }
        sink.flush().expect("the disk has room again");
        let written = String::from_utf8(disk.written.lock().unwrap().clone()).unwrap();
        assert_eq!(written, "{\"n\":1}\n{\"n\"\n{\"n\":5}\n{\"n\":6}\n");
    }

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = std::env::temp_dir().join(format!("stagewall-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let mut sink = Sink::file(RotatingFile::open(path.clone(), 100, 2).unwrap());
        for i in 0..30 {
            sink.write_line(format!("{{\"n\":{i:04}}}").as_bytes())
                .unwrap();
        }
        sink.flush().unwrap();
        let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) <= 100 && size(&path) > 0);
        assert!(size(&rotated(&path, 1)) > 0 && size(&rotated(&path, 2)) > 0);
        assert!(!rotated(&path, 3).exists(), "keeps 2 old files");
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
        let mut sink = Sink::file(RotatingFile::open(path.clone(), 100, 2).unwrap());
        for i in 0..10 {
            sink.write_line(format!("{{\"n\":{i:04}}}").as_bytes())
                .unwrap();
        }
        sink.flush().unwrap();
        // The current file was created after a rotation, `.1` before it.
        for p in [&path, &rotated(&path, 1)] {
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
