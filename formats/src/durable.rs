//! Crash-safe file replacement: write a temporary file beside the target,
//! `fsync` it, rename it over the target, then `fsync` the folder (the
//! sequence rustup's `raw.rs` uses; see also rename(2) and fsync(2)).
//!
//! This module is a door to the filesystem of its own: every error it
//! returns is a [`DurableError`] naming the file, so it calls `std::fs`
//! directly (fs-err would name the path a second time).
#![allow(clippy::disallowed_methods)]

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Error of a durable write, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{action} `{path}`: {source}")]
pub struct DurableError {
    /// What was being done.
    pub action: &'static str,
    /// The file or folder.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

fn err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DurableError + 'a {
    move |source| DurableError {
        action,
        path: path.to_owned(),
        source,
    }
}

/// `fsync`s a folder so a rename or create inside it survives a power cut.
///
/// # Errors
/// [`DurableError`] naming the folder.
pub fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("syncing folder", dir))
}

/// Creates `dir` and any missing parents with mode 0700 (before the umask),
/// so only the owner can enter them. A folder that already exists is left as
/// it is, permissions included.
///
/// # Errors
/// [`DurableError`] naming the folder.
pub fn create_private_dir(dir: &Path) -> Result<(), DurableError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err("creating folder", dir))
}

/// The folder holding `path` (`.` for a bare file name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The temporary name used beside `target`: `.NAME.airlock-tmp`.
pub fn temp_beside(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_of(target).join(format!(".{name}.airlock-tmp"))
}

/// Replaces `target` with what `fill` writes, durably: temp file beside it
/// with `mode` (Unix permission bits), `fill`, fsync, rename, fsync the folder.
/// On error the temp file is removed and `target` is unchanged.
///
/// # Errors
/// [`DurableError`] naming the file; `fill`'s error is reported as a write error.
pub fn write_atomic(
    target: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), DurableError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let tmp = temp_beside(target);
    let result = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err("creating", &tmp))?;
        fill(&mut file).map_err(err("writing", &tmp))?;
        file.flush().map_err(err("writing", &tmp))?;
        // The umask may have cleared bits of `mode`; set them exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(err("setting permissions of", &tmp))?;
        file.sync_all().map_err(err("syncing", &tmp))?;
        drop(file);
        std::fs::rename(&tmp, target).map_err(err("renaming over", target))?;
        sync_dir(parent_of(target))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// [`write_atomic`] with fixed contents.
///
/// # Errors
/// As [`write_atomic`].
pub fn write_bytes_atomic(target: &Path, mode: u32, bytes: &[u8]) -> Result<(), DurableError> {
    write_atomic(target, mode, |f| f.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        fs::write(&target, b"old").unwrap();
        write_bytes_atomic(&target, 0o750, b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o750
        );
        assert!(!temp_beside(&target).exists());
        let failed = write_atomic(&target, 0o644, |_| Err(io::Error::other("boom")));
        assert!(failed.is_err());
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert!(!temp_beside(&target).exists());
    }

    #[test]
    fn creates_nested_private_folders() {
        let dir = tempfile::tempdir().unwrap();
        let outer = dir.path().join("a");
        let inner = outer.join("b").join("c");
        create_private_dir(&inner).unwrap();
        for folder in [&outer, &outer.join("b"), &inner] {
            let meta = fs::metadata(folder).unwrap();
            assert!(meta.is_dir());
            assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{folder:?}");
        }
        // Already there: no error.
        create_private_dir(&inner).unwrap();
        // Under a regular file: the error names the folder asked for.
        fs::write(dir.path().join("file"), b"").unwrap();
        let below_file = dir.path().join("file").join("sub");
        let e = create_private_dir(&below_file).unwrap_err();
        assert_eq!(e.action, "creating folder");
        assert_eq!(e.path, below_file);
    }
}
