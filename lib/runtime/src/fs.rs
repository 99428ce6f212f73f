//! The one way reco saves a file: a crash or a power loss at any point
//! leaves either the old file or the new one, never a part, and never
//! neither.
//!
//! The bytes go to a temporary file in the same directory, which is synced,
//! renamed over the target, and then the directory is synced so that the
//! rename itself is durable.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Saves `bytes` as `path` atomically and durably (parent created if missing).
pub fn save_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    save_atomic_with(path, |file| file.write_all(bytes))
}

/// Saves what `write` writes as `path` atomically and durably, without
/// holding it all in memory first. The temporary file is removed on error.
pub fn save_atomic_with(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>) -> io::Result<()> {
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = temporary_beside(dir, path);
    let result = (|| {
        let mut file = BufWriter::new(File::create(&tmp)?);
        write(&mut file)?;
        file.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A hidden name beside `path` that no other save (of this process or another) uses at the same time.
fn temporary_beside(dir: &Path, path: &Path) -> PathBuf {
    static SAVES: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map_or_else(|| "file".into(), |name| name.to_string_lossy().into_owned());
    let save = SAVES.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.tmp-{}-{save}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("state.json");
        save_atomic(&path, b"first, longer content").unwrap();
        save_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(names(&dir.path().join("sub")), ["state.json"]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        save_atomic(&path, b"old").unwrap();
        let error = save_atomic_with(&path, |file| {
            file.write_all(b"half")?;
            Err(io::Error::other("serialiser failed"))
        })
        .unwrap_err();
        assert_eq!(error.to_string(), "serialiser failed");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["state.json"]);
    }

    #[test]
    fn a_missing_directory_that_cannot_be_made_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        assert!(save_atomic(&dir.path().join("file").join("state.json"), b"x").is_err());
    }
}
