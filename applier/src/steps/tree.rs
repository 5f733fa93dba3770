//! Trees, installed as a whole (docs/SITE.md, "Trees"; docs/FORMAT.md,
//! "Trees"). The stage step writes a tree's files beside its install folder,
//! as `.NAME.airlock-ID`; [`finish_staged`] adds its folders and links and
//! sets their modes. The install swaps the staged folder with the live one
//! by one `renameat2(RENAME_EXCHANGE)`, so the service never sees a half-new
//! tree, and the old tree waits beside it as `.NAME.airlock-old-ID` until
//! the commit moves it into the backup folder. Where the filesystem cannot
//! exchange, two renames do the same; [`undo_install`] tells from the
//! folders' identities (device and inode) how far an install got, so it
//! needs no journal row between them.

use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use airlock_formats::durable::sync_dir;
use airlock_formats::Tree;
use serde::{Deserialize, Serialize};

use crate::error::StepError;
use crate::steps::backup::{copy_file, hash_file};

/// `PARENT/.NAME.airlock-ID` for `target` `PARENT/NAME`: where apply `id`
/// stages what replaces it, on the same filesystem.
pub fn staged_beside(target: &Path, id: i64) -> PathBuf {
    beside(target, &format!("airlock-{id}"))
}

/// `PARENT/.NAME.airlock-old-ID`: where the tree that apply `id` replaced
/// waits until the commit.
pub fn old_beside(target: &Path, id: i64) -> PathBuf {
    beside(target, &format!("airlock-old-{id}"))
}

fn beside(target: &Path, suffix: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.{suffix}"))
}

/// Device and inode of `path` itself (links not followed), if it exists.
///
/// # Errors
/// [`StepError::Io`] other than "not found".
pub fn identity(path: &Path) -> Result<Option<(u64, u64)>, StepError> {
    match fs_err::symlink_metadata(path) {
        Ok(m) => Ok(Some((m.dev(), m.ino()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes the folder (or file, or link) `path` and all below it, if it exists.
///
/// # Errors
/// [`StepError::Io`] naming what could not be removed.
pub fn remove_all(path: &Path) -> Result<bool, StepError> {
    match fs_err::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs_err::remove_dir_all(path)?,
        Ok(_) => fs_err::remove_file(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(true)
}

/// Completes the staged tree at `root`, whose files the stage step wrote
/// and verified: creates its folders (empty ones too) and its links, gives
/// every folder `tree.dir_mode`, and fsyncs each folder, deepest first.
///
/// # Errors
/// [`StepError::Io`] naming the folder or link.
pub fn finish_staged(root: &Path, tree: &Tree) -> Result<(), StepError> {
    fs_err::create_dir_all(root)?;
    for dir in &tree.dirs {
        fs_err::create_dir_all(dir.join_to(root))?;
    }
    for link in &tree.links {
        let path = link.path.join_to(root);
        if fs_err::symlink_metadata(&path).is_ok() {
            fs_err::remove_file(&path)?;
        }
        fs_err::os::unix::fs::symlink(&link.target, &path)?;
    }
    let mut dirs: Vec<PathBuf> = tree.dirs.iter().map(|d| d.join_to(root)).collect();
    dirs.push(root.to_owned());
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in &dirs {
        fs_err::set_permissions(dir, std::fs::Permissions::from_mode(tree.dir_mode))?;
        sync_dir(dir)?;
    }
    if let Some(parent) = root.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Swaps `a` and `b` atomically (`renameat2` with `RENAME_EXCHANGE`).
/// `Ok(false)` when this filesystem or kernel cannot.
fn exchange(a: &Path, b: &Path) -> Result<bool, StepError> {
    // Tests take the path of a filesystem that cannot exchange.
    #[cfg(feature = "failpoints")]
    fail::fail_point!("tree-no-exchange", |_| Ok(false));
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::errno::Errno;
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        match renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => Ok(true),
            Err(Errno::EINVAL | Errno::ENOSYS | Errno::ENOTSUP) => Ok(false),
            Err(e) => Err(StepError::Io(io::Error::new(
                io::Error::from(e).kind(),
                format!("exchanging `{}` with `{}`: {e}", a.display(), b.display()),
            ))),
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (a, b);
        Ok(false)
    }
}

/// Puts the staged tree `staged` in place at `target`. When `target`
/// existed, the old tree ends at `old` (see the module docs). When it did
/// not, its parent folders are created, and a staged tree on another
/// filesystem (staged in the staging folder because the parent did not
/// exist) is copied beside it first. Returns how it was done.
///
/// # Errors
/// [`StepError::Io`] naming the folders.
pub fn install(staged: &Path, target: &Path, old: &Path) -> Result<&'static str, StepError> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    if identity(target)?.is_none() {
        fs_err::create_dir_all(parent)?;
        let how = match fs_err::rename(staged, target) {
            Ok(()) => "renamed into place",
            Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
                let beside = old.with_extension("copy");
                remove_all(&beside)?;
                copy_tree(staged, &beside)?;
                fs_err::rename(&beside, target)?;
                remove_all(staged)?;
                "copied beside it (the staging folder is on another filesystem), then renamed"
            }
            Err(e) => return Err(e.into()),
        };
        sync_dir(parent)?;
        return Ok(how);
    }
    let how = if exchange(staged, target)? {
        failpoint!("tree-after-exchange");
        fs_err::rename(staged, old)?;
        "exchanged with the old tree in one rename"
    } else {
        fs_err::rename(target, old)?;
        failpoint!("tree-between-renames");
        fs_err::rename(staged, target)?;
        "two renames (this filesystem cannot exchange)"
    };
    sync_dir(parent)?;
    Ok(how)
}

/// What undoing a tree's install needs (left by `install tree`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeInstall {
    /// The tree's name.
    pub name: String,
    /// The live folder.
    pub target: PathBuf,
    /// Where the new tree was staged.
    pub staged: PathBuf,
    /// Where the old tree waits until the commit.
    pub old: PathBuf,
    /// Device and inode of the staged new tree.
    pub new: Option<(u64, u64)>,
    /// Whether `target` existed before.
    pub existed: bool,
}

/// Undoes the install of `t`, from wherever it got: puts the old tree back
/// (from `t.old`, from `t.staged` when the install stopped between its
/// exchange and its rename, or else from `backup`, the copy the commit
/// made), or removes the new tree when there was none, and removes what is
/// left of the new one. Returns what it did.
///
/// # Errors
/// [`StepError`] naming the folders; [`StepError::BackupDamaged`] when the
/// backup copy is needed and does not match its record.
pub fn undo_install(
    t: &TreeInstall,
    backup: Option<(&Path, &TreeBackup)>,
) -> Result<String, StepError> {
    let parent = t.target.parent().unwrap_or(Path::new("/"));
    let live = identity(&t.target)?;
    let new_in_place = live.is_some() && live == t.new;
    if !t.existed {
        let removed = remove_all(&t.target)?;
        remove_all(&t.staged)?;
        return Ok(if removed {
            "removed (it did not exist before)".into()
        } else {
            "nothing to remove".into()
        });
    }
    if live.is_none() {
        // Two renames, stopped between them: the old tree is aside.
        fs_err::rename(&t.old, &t.target)?;
        remove_all(&t.staged)?;
        sync_dir(parent)?;
        return Ok("the old tree is back (the install had stopped between its renames)".into());
    }
    if !new_in_place {
        remove_all(&t.staged)?;
        remove_all(&t.old)?;
        return Ok("the old tree was still in place".into());
    }
    let aside = if identity(&t.old)?.is_some() {
        t.old.clone()
    } else if identity(&t.staged)?.is_some() {
        t.staged.clone()
    } else if let Some((dir, record)) = backup {
        restore_backup(dir, record, &t.staged)?;
        t.staged.clone()
    } else {
        return Err(StepError::Inconsistent {
            what: format!(
                "the tree that `{}` replaced is neither at `{}` nor in the backup",
                t.target.display(),
                t.old.display()
            ),
        });
    };
    if !exchange(&aside, &t.target)? {
        let spare = t.old.with_extension("new");
        fs_err::rename(&t.target, &spare)?;
        fs_err::rename(&aside, &t.target)?;
        remove_all(&spare)?;
    }
    remove_all(&aside)?;
    sync_dir(parent)?;
    Ok("the old tree is back in place".into())
}

/// Copies the folder `from` to `to` (which must not exist): folders, files
/// with their modes, and links as links; fsyncs as it goes.
///
/// # Errors
/// [`StepError::Io`] naming the file.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), StepError> {
    for entry in walkdir::WalkDir::new(from).follow_links(false) {
        let entry = entry.map_err(|e| StepError::Io(e.into()))?;
        let rel = entry.path().strip_prefix(from).unwrap_or(Path::new(""));
        let dst = to.join(rel);
        let meta = entry.path().symlink_metadata().map_err(StepError::Io)?;
        if meta.is_dir() {
            fs_err::create_dir_all(&dst)?;
            fs_err::set_permissions(&dst, meta.permissions())?;
        } else if meta.file_type().is_symlink() {
            fs_err::os::unix::fs::symlink(fs_err::read_link(entry.path())?, &dst)?;
        } else {
            copy_file(entry.path(), &dst, meta.permissions().mode() & 0o777)?;
        }
    }
    let mut dirs: Vec<PathBuf> = walkdir::WalkDir::new(to)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
        .map(|e| e.into_path())
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        sync_dir(&d)?;
    }
    Ok(())
}

/// A replaced tree kept in a backup folder (`backup.json`, `trees`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TreeBackup {
    /// The tree's name.
    pub name: String,
    /// The live folder.
    pub source: PathBuf,
    /// The copy, relative to the backup folder: `trees/NAME`.
    pub dir: String,
    /// Its folders, relative, with their permission bits.
    pub dirs: Vec<(String, u32)>,
    /// Its files, relative, with SHA-256, size and permission bits.
    pub files: Vec<crate::steps::backup::TreeFile>,
    /// Its links, relative, with their targets.
    pub links: Vec<(String, String)>,
}

/// Moves the replaced tree `old` (of tree `name` at `source`) into
/// `backup_dir/trees/NAME`: a rename on one filesystem, else a copy and a
/// removal. Returns its record, every file hashed.
///
/// # Errors
/// [`StepError`] naming the folders.
pub fn keep_in_backup(
    backup_dir: &Path,
    name: &str,
    source: &Path,
    old: &Path,
) -> Result<TreeBackup, StepError> {
    let rel = format!("trees/{name}");
    let dst = backup_dir.join(&rel);
    fs_err::create_dir_all(backup_dir.join("trees"))?;
    if identity(&dst)?.is_none() {
        match fs_err::rename(old, &dst) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
                let partial = backup_dir.join(format!("trees/.{name}.partial"));
                remove_all(&partial)?;
                copy_tree(old, &partial)?;
                fs_err::rename(&partial, &dst)?;
                remove_all(old)?;
            }
            Err(e) => return Err(e.into()),
        }
        sync_dir(&backup_dir.join("trees"))?;
    }
    let mut record = TreeBackup {
        name: name.into(),
        source: source.into(),
        dir: rel,
        dirs: Vec::new(),
        files: Vec::new(),
        links: Vec::new(),
    };
    for entry in walkdir::WalkDir::new(&dst)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| StepError::Io(e.into()))?;
        let path = entry.path();
        let rel = path
            .strip_prefix(&dst)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned();
        let meta = path.symlink_metadata().map_err(StepError::Io)?;
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            record.dirs.push((rel, mode));
        } else if meta.file_type().is_symlink() {
            let target = fs_err::read_link(path)?.to_string_lossy().into_owned();
            record.links.push((rel, target));
        } else {
            let (sha256, size) = hash_file(path)?;
            record.files.push(crate::steps::backup::TreeFile {
                path: rel,
                sha256,
                size,
                mode,
            });
        }
    }
    Ok(record)
}

/// The files of a kept tree that are missing or differ from their record.
///
/// # Errors
/// [`StepError::Io`] other than "not found".
pub fn damaged(backup_dir: &Path, record: &TreeBackup) -> Result<Vec<PathBuf>, StepError> {
    let mut bad = Vec::new();
    for f in &record.files {
        let path = backup_dir.join(&record.dir).join(&f.path);
        match hash_file(&path) {
            Ok((sha, _)) if sha == f.sha256 => {}
            Ok(_) => bad.push(path),
            Err(e) if e.io_kind() == Some(io::ErrorKind::NotFound) => bad.push(path),
            Err(e) => return Err(e),
        }
    }
    Ok(bad)
}

/// Copies a kept tree out of the backup to `to`, checking every file's
/// SHA-256 and restoring folder modes and links.
fn restore_backup(backup_dir: &Path, record: &TreeBackup, to: &Path) -> Result<(), StepError> {
    let from = backup_dir.join(&record.dir);
    if let Some(path) = damaged(backup_dir, record)?.into_iter().next() {
        return Err(StepError::BackupDamaged { path });
    }
    remove_all(to)?;
    copy_tree(&from, to)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::fs;

    use super::*;

    fn tree_with(dir: &Path, files: &[&str]) {
        for f in files {
            let p = dir.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, f).unwrap();
        }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = walkdir::WalkDir::new(dir)
            .min_depth(1)
            .into_iter()
            .map(|e| {
                e.unwrap()
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        out.sort();
        out
    }

    /// What `install tree` of apply `id` records for `staged` -> `target`.
    fn record(target: &Path, staged: &Path, id: i64, existed: bool) -> TreeInstall {
        TreeInstall {
            name: "static".into(),
            target: target.to_owned(),
            staged: staged.to_owned(),
            old: old_beside(target, id),
            new: identity(staged).unwrap(),
            existed,
        }
    }

    #[test]
    fn install_exchanges_and_undo_puts_the_old_tree_back() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("static");
        tree_with(&target, &["a.css", "old-only.txt"]);
        let staged = staged_beside(&target, 7);
        tree_with(&staged, &["a.css", "new-only.txt"]);
        let t = record(&target, &staged, 7, true);
        install(&staged, &target, &t.old).unwrap();
        assert_eq!(listing(&target), ["a.css", "new-only.txt"]);
        assert!(!staged.exists());
        undo_install(&t, None).unwrap();
        assert_eq!(listing(&target), ["a.css", "old-only.txt"]);
        assert!(!t.old.exists() && !staged.exists());
        // Undoing again changes nothing.
        undo_install(&t, None).unwrap();
        assert_eq!(listing(&target), ["a.css", "old-only.txt"]);
    }

    #[test]
    fn undo_after_the_commit_restores_the_kept_copy() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("static");
        tree_with(&target, &["a.css", "sub/old.txt"]);
        let staged = staged_beside(&target, 3);
        tree_with(&staged, &["a.css"]);
        let t = record(&target, &staged, 3, true);
        install(&staged, &target, &t.old).unwrap();
        let backup = dir.path().join("backup");
        let record = keep_in_backup(&backup, "static", &target, &t.old).unwrap();
        assert!(!t.old.exists());
        assert_eq!(record.files.len(), 2);
        undo_install(&t, Some((&backup, &record))).unwrap();
        assert_eq!(listing(&target), ["a.css", "sub", "sub/old.txt"]);

        // A damaged copy is refused before anything changes.
        fs::write(backup.join("trees/static/a.css"), "changed").unwrap();
        assert!(damaged(&backup, &record).unwrap().len() == 1);
    }

    #[test]
    fn a_tree_that_did_not_exist_is_removed_on_undo() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("deep/new/static");
        let staged = dir.path().join("staging-trees-static");
        tree_with(&staged, &["x"]);
        let t = record(&target, &staged, 1, false);
        install(&staged, &target, &t.old).unwrap();
        assert_eq!(listing(&target), ["x"]);
        undo_install(&t, None).unwrap();
        assert!(!target.exists());
    }
}
