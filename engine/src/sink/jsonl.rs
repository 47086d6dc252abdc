//! `jsonl:-` and `jsonl:PATH[,rotate=SIZE][,keep=N]`: one JSON object per
//! line.
//!
//! A file is opened for append (a restart continues the log) and each
//! message goes out as one `write` of a whole line, so a crash loses at
//! most the line being written, never earlier ones. Rotation renames
//! `PATH` → `PATH.1` → … → `PATH.N` (the oldest is deleted) when `PATH`
//! would pass `SIZE`, so a board running for months cannot fill its disk.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{OutputSpec, Sink, SinkError};
use crate::event::Message;

/// Parses the `PATH[,rotate=SIZE][,keep=N]` part of `jsonl:…`.
pub(crate) fn parse_file_spec(spec: &str, rest: &str) -> Result<OutputSpec, SinkError> {
    let mut parts = rest.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err(SinkError::spec(
            spec,
            "expected a file path or - after jsonl:",
        ));
    }
    let mut rotate_bytes = None;
    let mut keep = 5usize;
    for option in parts {
        match option.split_once('=') {
            Some(("rotate", size)) => {
                rotate_bytes = Some(parse_size(size).ok_or_else(|| {
                    SinkError::spec(
                        spec,
                        format!(
                            "rotate={size}: expected a size in bytes such as 65536, 512k, 64M or 1G"
                        ),
                    )
                })?)
            }
            Some(("keep", n)) => {
                keep = n.parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
                    SinkError::spec(spec, format!("keep={n}: expected a count of at least 1"))
                })?
            }
            _ => {
                return Err(SinkError::spec(
                    spec,
                    format!("unknown option `{option}`; expected rotate=SIZE or keep=N"),
                ));
            }
        }
    }
    Ok(OutputSpec::File {
        path: PathBuf::from(path),
        rotate_bytes,
        keep,
    })
}

fn parse_size(s: &str) -> Option<u64> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        "" => 1,
        "k" | "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale).filter(|&b| b > 0)
}

enum Target {
    Stdout(std::io::Stdout),
    File {
        path: PathBuf,
        file: File,
        written: u64,
        rotate_bytes: Option<u64>,
        keep: usize,
    },
}

/// Writes messages as JSON lines.
pub struct JsonlSink {
    target: Target,
    line: Vec<u8>,
}

impl JsonlSink {
    pub fn stdout() -> Self {
        JsonlSink {
            target: Target::Stdout(std::io::stdout()),
            line: Vec::with_capacity(1024),
        }
    }

    /// Opens `path` for append.
    ///
    /// # Errors
    /// [`SinkError::Io`] naming the file.
    pub fn file(path: &Path, rotate_bytes: Option<u64>, keep: usize) -> Result<Self, SinkError> {
        let file = open_append(path)?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(JsonlSink {
            target: Target::File {
                path: path.to_path_buf(),
                file,
                written,
                rotate_bytes,
                keep: keep.max(1),
            },
            line: Vec::with_capacity(1024),
        })
    }
}

fn open_append(path: &Path) -> Result<File, SinkError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| SinkError::io(path.display().to_string(), e))
}

/// `PATH.n`.
fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn rotate(path: &Path, keep: usize) -> Result<(), SinkError> {
    let io = |e| SinkError::io(path.display().to_string(), e);
    let oldest = numbered(path, keep);
    if oldest.exists() {
        std::fs::remove_file(&oldest).map_err(io)?;
    }
    for n in (1..keep).rev() {
        let from = numbered(path, n);
        if from.exists() {
            std::fs::rename(&from, numbered(path, n + 1)).map_err(io)?;
        }
    }
    std::fs::rename(path, numbered(path, 1)).map_err(io)
}

impl Sink for JsonlSink {
    fn name(&self) -> String {
        match &self.target {
            Target::Stdout(_) => "jsonl:-".into(),
            Target::File { path, .. } => format!("jsonl:{}", path.display()),
        }
    }

    fn publish(&mut self, message: &Message) -> Result<(), SinkError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, message)
            .map_err(|e| SinkError::io(self.name(), std::io::Error::other(e)))?;
        self.line.push(b'\n');
        match &mut self.target {
            Target::Stdout(out) => {
                let mut lock = out.lock();
                lock.write_all(&self.line)
                    .and_then(|()| lock.flush())
                    .map_err(|e| SinkError::io("stdout", e))
            }
            Target::File {
                path,
                file,
                written,
                rotate_bytes,
                keep,
            } => {
                let len = self.line.len() as u64;
                if rotate_bytes.is_some_and(|max| *written > 0 && *written + len > max) {
                    file.sync_data()
                        .map_err(|e| SinkError::io(path.display().to_string(), e))?;
                    rotate(path, *keep)?;
                    *file = open_append(path)?;
                    *written = 0;
                }
                file.write_all(&self.line)
                    .map_err(|e| SinkError::io(path.display().to_string(), e))?;
                *written += len;
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        match &mut self.target {
            Target::Stdout(out) => out.flush().map_err(|e| SinkError::io("stdout", e)),
            // Character devices and FIFOs (`/dev/null`, a named pipe)
            // cannot be synced (EINVAL); nothing is lost by skipping them.
            Target::File { path, file, .. } => match file.sync_data() {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
                other => other.map_err(|e| SinkError::io(path.display().to_string(), e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Header, SourceNotice};

    fn notice(i: usize) -> Message {
        Message::SourceOpened(SourceNotice {
            header: Header::at(0, "emogate"),
            stamp_s: i as f64,
            modality: "audio",
            source: format!("file:{i:04}"),
            error: None,
            retry_in_ms: None,
        })
    }

    #[test]
    fn appends_and_rotates_keeping_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
        let line_len = notice(0).to_json().len() as u64 + 1;
        let mut sink = JsonlSink::file(&path, Some(line_len * 3), 2).unwrap();
        for i in 0..20 {
            sink.publish(&notice(i)).unwrap();
        }
        sink.flush().unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = current.lines().collect();
        assert!(!lines.is_empty() && lines.len() <= 3, "{current}");
        assert!(lines.last().unwrap().contains("file:0019"));
        // Every kept line is whole JSON; nothing older than PATH.2 is kept.
        for p in [numbered(&path, 1), numbered(&path, 2)] {
            for l in std::fs::read_to_string(&p).unwrap().lines() {
                serde_json::from_str::<serde_json::Value>(l).unwrap();
            }
        }
        assert!(!numbered(&path, 3).exists());
    }

    #[test]
    fn flushing_an_unsyncable_file_is_not_an_error() {
        let mut sink = JsonlSink::file(Path::new("/dev/null"), None, 1).unwrap();
        sink.publish(&notice(1)).unwrap();
        sink.flush().unwrap();
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("5T"), None);
    }

    #[test]
    fn unopenable_file_names_the_path() {
        let e = JsonlSink::file(Path::new("/nonexistent-dir/e.jsonl"), None, 1)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent-dir/e.jsonl"), "{e}");
    }
}
