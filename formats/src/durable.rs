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

/// How the temporary files [`write_atomic`] makes end: `.NAME.XXXXXX.airlock-tmp`
/// beside the target `NAME`, `XXXXXX` random.
pub const TEMP_SUFFIX: &str = ".airlock-tmp";

/// Random characters in a temporary file's name.
const TEMP_RANDOM: usize = 6;

fn file_name(target: &Path) -> String {
    target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether `name` is one of [`write_atomic`]'s temporary files for `target`.
fn is_temp_of(name: &str, target: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_prefix(target))
        .and_then(|n| n.strip_prefix('.'))
        .and_then(|n| n.strip_suffix(TEMP_SUFFIX))
        .is_some_and(|random| {
            random.len() == TEMP_RANDOM && random.chars().all(|c| c.is_ascii_alphanumeric())
        })
}

/// Replaces `target` with what `fill` writes, durably: a temporary file with
/// a unique name beside it (so two writers never share one) and `mode`
/// (Unix permission bits), `fill`, fsync, rename over the target, fsync the
/// folder. On error the temporary file is removed and `target` is unchanged;
/// a crash may leave it, for [`remove_temps_beside`].
///
/// # Errors
/// [`DurableError`] naming the file; `fill`'s error is reported as a write error.
pub fn write_atomic(
    target: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), DurableError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = parent_of(target);
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", file_name(target)))
        .suffix(TEMP_SUFFIX)
        .rand_bytes(TEMP_RANDOM)
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(err("creating a temporary file in", dir))?;
    let path = tmp.path().to_owned();
    fill(tmp.as_file_mut()).map_err(err("writing", &path))?;
    tmp.as_file_mut().flush().map_err(err("writing", &path))?;
    // The umask may have cleared bits of `mode`; set them exactly.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err("setting permissions of", &path))?;
    tmp.as_file().sync_all().map_err(err("syncing", &path))?;
    tmp.persist(target)
        .map_err(|e| err("renaming over", target)(e.error))?;
    sync_dir(dir)
}

/// Removes the temporary files [`write_atomic`] left beside `target` when
/// the process died before renaming them (`resume` and `rollback` call this
/// for every file they put back). Returns how many it removed.
///
/// # Errors
/// [`DurableError`] naming the folder or the file that could not be removed.
pub fn remove_temps_beside(target: &Path) -> Result<usize, DurableError> {
    let dir = parent_of(target);
    let name = file_name(target);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(err("reading folder", dir)(e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(err("reading folder", dir))?;
        if is_temp_of(&entry.file_name().to_string_lossy(), &name) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(err("removing", &path))?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
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
        let only_target = || fs::read_dir(dir.path()).unwrap().count() == 1;
        assert!(only_target());
        let failed = write_atomic(&target, 0o644, |_| Err(io::Error::other("boom")));
        assert!(failed.is_err());
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert!(only_target(), "a temporary file was left");
    }

    #[test]
    fn leftover_temporary_files_are_found_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("demo");
        fs::write(dir.path().join(".demo.a1B2c3.airlock-tmp"), b"half").unwrap();
        fs::write(dir.path().join(".demo.Zz9Yy8.airlock-tmp"), b"half").unwrap();
        // Another file's temporary files and the target stay.
        fs::write(dir.path().join(".demo.conf.q1w2e3.airlock-tmp"), b"keep").unwrap();
        fs::write(dir.path().join(".demo-other.q1w2e3.airlock-tmp"), b"keep").unwrap();
        fs::write(dir.path().join("demo"), b"keep").unwrap();
        assert_eq!(remove_temps_beside(&target).unwrap(), 2);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
        assert_eq!(remove_temps_beside(&dir.path().join("gone/x")).unwrap(), 0);
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
