//! Temp files that outputs are written to before being renamed into place.
//!
//! Every output (`out.onnx`, its side file `out.onnx.data`, a report) is
//! first written to `.<output name>.<random><SUFFIX>` in the output's own
//! folder, so the final rename never crosses a filesystem, and a crash
//! leaves at most such a file, never a partial output.
//!
//! A process killed mid-write (kill -9, OOM, power cut) cannot remove its
//! temp file. The writer holds an exclusive `flock` on it while writing;
//! the kernel drops the lock when the process dies. Before writing an
//! output, [`remove_stale`] deletes the temp files of that output whose
//! lock it can take: their writer is gone. Files that are not of our
//! naming, or of another output, are never touched, and a temp file still
//! locked by a live writer (a concurrent run) is left alone.
//!
//! Outputs that are folders (`transfer --out-adapter`) are staged the same
//! way in a folder of the same naming ([`create_dir`]), locked through the
//! folder's own descriptor, and renamed into place whole.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// How our temp files end: `.<output name>.<random>.emogate-tmp`.
pub const SUFFIX: &str = ".emogate-tmp";

fn prefix(name: &str) -> String {
    format!(".{name}.")
}

/// Whether `file_name` is one of our temp files for the output `name`.
pub fn is_temp_of(file_name: &str, name: &str) -> bool {
    file_name
        .strip_prefix(&prefix(name))
        .and_then(|rest| rest.strip_suffix(SUFFIX))
        .is_some_and(|random| !random.is_empty() && !random.contains('.'))
}

/// Creates a locked temp file for the output `name` in `dir`.
///
/// # Errors
/// The I/O error of creating or locking it.
pub fn create(dir: &Path, name: &str) -> std::io::Result<NamedTempFile> {
    let tmp = tempfile::Builder::new()
        .prefix(&prefix(name))
        .suffix(SUFFIX)
        .tempfile_in(dir)?;
    // Fresh and ours: only a concurrent `remove_stale` could hold it, in
    // the instant between creation and this call.
    tmp.as_file().try_lock().map_err(|e| match e {
        TryLockError::Error(e) => e,
        TryLockError::WouldBlock => std::io::Error::other(format!(
            "temp file {} was locked by another process as it was created",
            tmp.path().display()
        )),
    })?;
    Ok(tmp)
}

/// A locked temp folder for a folder output (see [`create_dir`]); removed
/// on drop unless [`StagingDir::persist`] renamed it into place.
#[derive(Debug)]
pub struct StagingDir {
    path: PathBuf,
    // The folder opened for its `flock`; held until persisted or dropped.
    lock: Option<File>,
}

impl StagingDir {
    /// The temp folder, to write the output's files into.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the folder to `to` (which must not exist, or be an empty
    /// folder) and releases the lock.
    ///
    /// # Errors
    /// The I/O error of the rename; the temp folder is then removed.
    pub fn persist(mut self, to: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, to)?;
        self.lock = None;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Creates a locked temp folder `.<name>.<random>.emogate-tmp` in `dir`
/// for the folder output `name`.
///
/// # Errors
/// The I/O error of creating, opening or locking it.
pub fn create_dir(dir: &Path, name: &str) -> std::io::Result<StagingDir> {
    let path = tempfile::Builder::new()
        .prefix(&prefix(name))
        .suffix(SUFFIX)
        .tempdir_in(dir)?
        .keep();
    // From here on the folder is ours to remove, whatever fails.
    let mut staging = StagingDir { path, lock: None };
    let folder = File::open(&staging.path)?;
    folder.try_lock().map_err(|e| match e {
        TryLockError::Error(e) => e,
        TryLockError::WouldBlock => std::io::Error::other(format!(
            "temp folder {} was locked by another process as it was created",
            staging.path.display()
        )),
    })?;
    staging.lock = Some(folder);
    Ok(staging)
}

/// Removes the temp files (and temp folders, for folder outputs) of the
/// output `name` in `dir` left by writers that died; returns the paths
/// removed. Best effort: a folder or file that cannot be read or removed
/// is skipped (the write that follows reports its own errors).
pub fn remove_stale(dir: &Path, name: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        // Symbolic links are never followed, nor removed: not ours.
        if !is_temp_of(file_name, name) || !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = File::open(&path) else {
            continue;
        };
        // Taking the lock proves the writer is gone; holding it while
        // removing keeps a writer from starting on this very file.
        let remove = || {
            if kind.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            }
        };
        if file.try_lock().is_ok() && remove().is_ok() {
            tracing::info!(path = %path.display(), "removed a temp file left by an interrupted write");
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_matched_exactly() {
        assert!(is_temp_of(".out.onnx.a1B2c3.emogate-tmp", "out.onnx"));
        assert!(!is_temp_of(".out.onnx.data.a1B2c3.emogate-tmp", "out.onnx"));
        assert!(is_temp_of(
            ".out.onnx.data.a1B2c3.emogate-tmp",
            "out.onnx.data"
        ));
        assert!(!is_temp_of(".out.onnx..emogate-tmp", "out.onnx"));
        assert!(!is_temp_of(".tmpa1B2c3", "out.onnx"));
        assert!(!is_temp_of("out.onnx", "out.onnx"));
    }

    #[test]
    fn only_unlocked_temp_files_of_the_output_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let live = create(dir.path(), "out.onnx").unwrap();
        // A dead writer's file: ours by name, nobody holds its lock.
        let dead = dir.path().join(".out.onnx.XyZ123.emogate-tmp");
        std::fs::write(&dead, b"partial").unwrap();
        let other = dir.path().join(".other.onnx.XyZ123.emogate-tmp");
        std::fs::write(&other, b"partial").unwrap();
        let foreign = dir.path().join(".tmpXyZ123");
        std::fs::write(&foreign, b"not ours").unwrap();
        assert_eq!(remove_stale(dir.path(), "out.onnx"), vec![dead.clone()]);
        assert!(live.path().exists() && other.exists() && foreign.exists());
        let live_path = live.path().to_path_buf();
        // Dropped (the writer gave up): the file is gone anyway.
        drop(live);
        assert!(!live_path.exists());
    }

    #[test]
    fn only_unlocked_temp_folders_of_the_output_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let live = create_dir(dir.path(), "adapter").unwrap();
        std::fs::write(live.path().join("adapter_config.json"), b"{}").unwrap();
        // A dead writer's folder, with a file in it: nobody holds its lock.
        let dead = dir.path().join(".adapter.XyZ123.emogate-tmp");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("adapter_model.safetensors"), b"partial").unwrap();
        let other = dir.path().join(".other.XyZ123.emogate-tmp");
        std::fs::create_dir(&other).unwrap();
        assert_eq!(remove_stale(dir.path(), "adapter"), vec![dead.clone()]);
        assert!(live.path().exists() && other.exists() && !dead.exists());

        // Persisted: renamed whole, the lock released, nothing left.
        let out = dir.path().join("adapter");
        let live_path = live.path().to_path_buf();
        live.persist(&out).unwrap();
        assert!(out.join("adapter_config.json").exists() && !live_path.exists());
        assert!(remove_stale(dir.path(), "adapter").is_empty());

        // Dropped before persisting (an error on the way): removed.
        let failed = create_dir(dir.path(), "adapter").unwrap();
        let failed_path = failed.path().to_path_buf();
        drop(failed);
        assert!(!failed_path.exists());
    }
}
