//! Where the JSON-lines event log goes: stdout, or a file rotated by size (the current
//! file, then `.1` the newest old one up to `.N`), so a flood cannot fill the disk.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Stdout, Write},
    path::PathBuf,
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
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
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
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.file = BufWriter::new(file);
        self.written = 0;
        Ok(())
    }
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
}
