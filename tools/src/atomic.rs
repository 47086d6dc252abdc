//! Outputs that appear complete or not at all: written to a temp file in
//! the destination's folder, then renamed over it. The temp files are
//! [`emogate_models::staging`]'s (`.<name>.<random>.emogate-tmp`); those a
//! killed run left for the same output are removed before writing.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use emogate_models::staging;
use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// Buffer of an [`AtomicFile`]: large writes (weights) go through in few syscalls.
const BUFFER_BYTES: usize = 8 << 20;
/// Temp files are created 0600; outputs are for everyone to read.
const OUTPUT_MODE: u32 = 0o644;

/// The folder `path` will be written in (`.` for a bare file name).
fn folder(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Creates the folder an output goes in, with its parents.
///
/// # Errors
/// [`Error::Io`] naming the folder.
pub fn create_parent_dir(path: &Path) -> Result<()> {
    let dir = folder(path);
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating the output folder", dir, e))
}

/// A file being written; it appears at its path only on [`commit`](Self::commit).
/// Dropped without a commit, it leaves nothing behind.
pub struct AtomicFile {
    path: PathBuf,
    out: BufWriter<NamedTempFile>,
}

impl AtomicFile {
    /// Starts writing `path` (its folder must exist).
    ///
    /// # Errors
    /// [`Error::Io`] when the temp file cannot be created.
    pub fn create(path: &Path) -> Result<Self> {
        let dir = folder(path);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::field(path, "output path", "expected a file name in UTF-8"))?;
        staging::remove_stale(dir, name);
        let tmp =
            staging::create(dir, name).map_err(|e| Error::io("creating a temp file in", dir, e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(OUTPUT_MODE))
                .map_err(|e| Error::io("setting permissions of", tmp.path(), e))?;
        }
        Ok(AtomicFile {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(BUFFER_BYTES, tmp),
        })
    }

    /// The path the file will have.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes, optionally `fsync`s, and renames the file into place.
    ///
    /// # Errors
    /// [`Error::Io`] naming the destination.
    pub fn commit(self, sync: bool) -> Result<()> {
        let path = self.path;
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| Error::io("writing", &path, e.into_error()))?;
        if sync {
            tmp.as_file()
                .sync_all()
                .map_err(|e| Error::io("syncing", &path, e))?;
        }
        tmp.persist(&path)
            .map_err(|e| Error::io("renaming into place", &path, e.error))?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.out.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Writes `bytes` to `path` through a temp file and a rename.
///
/// # Errors
/// [`Error::Io`] naming `path`.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)
        .map_err(|e| Error::io("writing", path, e))?;
    file.commit(false)
}

/// Writes `value` as pretty JSON to `path` through a temp file and a rename.
///
/// # Errors
/// [`Error::Json`] when it does not serialize, [`Error::Io`] naming `path`.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push(b'\n');
    write_bytes(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_appear_whole_on_commit_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/out.json");
        create_parent_dir(&path).unwrap();
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"half").unwrap();
        assert!(!path.exists());
        drop(f);
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            0
        );
        write_json(&path, &serde_json::json!({"k": 1})).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\n  \"k\": 1\n}\n"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, OUTPUT_MODE);
        let e = write_bytes(&dir.path().join("missing/x"), b"x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("creating a temp file in") && e.contains("missing"),
            "{e}"
        );
    }
}
