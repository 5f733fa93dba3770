//! The install step: a binary or file from the staging folder is written
//! beside its target, fsynced and renamed over it (docs/FORMAT.md, "Roles";
//! docs/SITE.md, `[binaries]` and `[files]`).

use std::path::{Path, PathBuf};

use airlock_formats::durable::write_atomic;
use airlock_formats::{FileEntry, Role};

use crate::error::StepError;
use crate::site::Site;
use crate::steps::stage;

/// Where a payload entry is installed on this site, if it is installed at
/// all: the site profile's `[binaries]` or `[files]` entry, else the
/// bundle's `install_path`. Migrations and scripts are not installed.
pub fn install_target(site: &Site, entry: &FileEntry) -> Option<PathBuf> {
    match entry.role {
        Role::Binary => entry
            .name
            .as_ref()
            .and_then(|n| site.profile.binaries.get(n).cloned())
            .or_else(|| entry.install_path.as_ref().map(PathBuf::from)),
        Role::File => site
            .profile
            .files
            .get(entry.path.as_str())
            .cloned()
            .or_else(|| entry.install_path.as_ref().map(PathBuf::from)),
        Role::Migration | Role::Script => None,
    }
}

/// Installs the staged `entry` at `target` with `mode`, durably (a crash
/// leaves the old file or the new one, never a mix).
///
/// # Errors
/// [`StepError`] naming the staged file or the target.
pub fn install(
    stage_dir: &Path,
    entry: &FileEntry,
    target: &Path,
    mode: u32,
) -> Result<(), StepError> {
    if let Some(parent) = target.parent() {
        fs_err::create_dir_all(parent)?;
    }
    let mut staged = stage::open_staged(stage_dir, entry)?;
    write_atomic(target, mode, |f| {
        std::io::copy(&mut staged, f)?;
        // Written beside the target, not renamed over it yet.
        failpoint!("install-before-rename");
        Ok(())
    })?;
    Ok(())
}
