//! The install step: a binary or file the stage step wrote beside its
//! target (`.NAME.airlock-ID`, fsynced) is renamed over it, so the install
//! costs a rename while the service is down (docs/FORMAT.md, "Roles";
//! docs/SITE.md, `[binaries]` and `[files]`). A target whose folder did not
//! exist at the stage is renamed from the staging folder, or copied when
//! that is on another filesystem.

use std::path::{Path, PathBuf};

use std::os::unix::fs::PermissionsExt as _;

use airlock_formats::durable::{parent_of, sync_dir, write_atomic};
use airlock_formats::{FileEntry, Role};
use serde::{Deserialize, Serialize};

use crate::error::StepError;
use crate::site::Site;
use crate::steps::stage;
use crate::steps::tree::staged_beside;

/// Where the stage step puts what an install step puts in place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Staging {
    /// Beside the target, on its filesystem (`.NAME.airlock-ID`): the
    /// install is a rename.
    Beside,
    /// In the staging folder, because the target's folder does not exist
    /// yet: the install creates it and renames, or copies when the staging
    /// folder is on another filesystem.
    #[default]
    Central,
}

impl Staging {
    /// Where `target` is staged: beside it when its folder exists.
    pub fn for_target(target: &Path) -> Self {
        match target.parent() {
            Some(p) if fs_err::metadata(p).is_ok_and(|m| m.is_dir()) => Self::Beside,
            _ => Self::Central,
        }
    }

    /// How the install will be done, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Beside => "staged beside it, installed by rename",
            Self::Central => "its folder does not exist yet: created, then renamed from the staging folder (copied if that is on another filesystem)",
        }
    }
}

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
        Role::Migration | Role::Script | Role::Tree => None,
    }
}

/// Installs the staged `entry` at `target` with `mode`, durably (a crash
/// leaves the old file or the new one, never a mix), from where `staging`
/// says the stage step of apply `apply_id` put it. Returns how.
///
/// # Errors
/// [`StepError`] naming the staged file or the target.
pub fn install(
    stage_dir: &Path,
    entry: &FileEntry,
    target: &Path,
    mode: u32,
    staging: Staging,
    apply_id: i64,
) -> Result<&'static str, StepError> {
    let parent = parent_of(target);
    if staging == Staging::Beside {
        let staged = staged_beside(target, apply_id);
        // Staged and verified beside the target, not renamed over it yet.
        failpoint!("install-before-rename");
        fs_err::rename(&staged, target)?;
        sync_dir(parent)?;
        return Ok("renamed into place");
    }
    fs_err::create_dir_all(parent)?;
    let staged = entry.path.join_to(stage_dir);
    fs_err::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
    match fs_err::rename(&staged, target) {
        Ok(()) => {
            sync_dir(parent)?;
            Ok("renamed from the staging folder")
        }
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            let mut staged = stage::open_staged(stage_dir, entry)?;
            write_atomic(target, mode, |f| {
                std::io::copy(&mut staged, f)?;
                // Written beside the target, not renamed over it yet.
                failpoint!("install-before-rename");
                Ok(())
            })?;
            Ok("copied (the staging folder is on another filesystem)")
        }
        Err(e) => Err(e.into()),
    }
}
