//! `airlock-apply backups list|verify|prune` (docs/OPERATIONS.md, "Backups
//! and the audit log").

use std::path::{Path, PathBuf};

use crate::commands::apply::refuse_if_interrupted;
use crate::commands::status::backup_summary;
use crate::error::ApplyError;
use crate::lock::lock;
use crate::protocol::BackupSummary;
use crate::site::Site;
use crate::state::State;
use crate::steps::backup;

/// Every backup folder, each copy re-hashed against its `backup.json`.
///
/// # Errors
/// [`ApplyError::Preflight`] naming the folder or copy that cannot be read
/// (a permission problem, not damage).
pub fn list(site: &Site) -> Result<Vec<BackupSummary>, ApplyError> {
    let unreadable = |cause| ApplyError::Preflight {
        step: "reading the backups".into(),
        cause: Box::new(cause),
    };
    let mut rows = Vec::new();
    for b in backup::list(&site.profile.paths.backup_dir).map_err(unreadable)? {
        let problems: Vec<String> = match &b.manifest {
            Some(m) => backup::verify(&b.dir, m)
                .map_err(unreadable)?
                .iter()
                .map(ToString::to_string)
                .collect(),
            None => vec!["incomplete: no backup.json (the apply stopped while backing up)".into()],
        };
        rows.push(BackupSummary {
            intact: Some(problems.is_empty()),
            problems,
            ..backup_summary(&b)
        });
    }
    Ok(rows)
}

/// The error `backups verify` ends with when any backup is damaged or incomplete.
pub fn damaged(rows: &[BackupSummary]) -> Option<ApplyError> {
    let damaged: Vec<String> = rows
        .iter()
        .filter(|r| r.intact == Some(false))
        .map(|r| format!("`{}`: {}", r.dir, r.problems.join("; ")))
        .collect();
    (!damaged.is_empty())
        .then(|| ApplyError::CheckFailed(format!("damaged backups: {}", damaged.join("; "))))
}

/// The backups as text, one a line.
pub fn render(rows: &[BackupSummary], backup_dir: &Path) -> String {
    if rows.is_empty() {
        return format!("no backups in `{}`\n", backup_dir.display());
    }
    rows.iter()
        .map(|r| {
            format!(
                "{}  {} -> {}  at {}  {}  {}\n",
                r.dir,
                r.from.as_deref().unwrap_or("?"),
                r.to.as_deref().unwrap_or("?"),
                r.created_at
                    .map_or_else(|| "?".into(), airlock_formats::time::rfc3339_signed),
                airlock_formats::shown::bytes(r.size),
                if r.intact == Some(true) {
                    "hashes match"
                } else {
                    "DAMAGED"
                }
            )
        })
        .collect()
}

/// Removes complete backups beyond the newest `keep` (default
/// `keep_backups`, at least 1) and incomplete ones, never the backup of the
/// last completed apply. Returns how many it kept and what it removed.
///
/// # Errors
/// [`ApplyError::Busy`], [`ApplyError::Interrupted`] (an interrupted apply
/// may still need its backup), or the folder that could not be removed.
pub fn prune(site: &Site, keep: Option<usize>) -> Result<(usize, Vec<PathBuf>), ApplyError> {
    let _lock = lock(site)?;
    let mut protect = Vec::new();
    if let Some(state) = State::open_existing(&site.profile.paths.state_dir)? {
        refuse_if_interrupted(&state)?;
        // `rollback` needs the backup of the last completed apply.
        if let Some(dir) = state.last_completed_apply()?.and_then(|a| a.backup_dir) {
            protect.push(PathBuf::from(dir));
        }
    }
    let keep = keep.unwrap_or(site.profile.paths.keep_backups).max(1);
    let protected: Vec<&Path> = protect.iter().map(PathBuf::as_path).collect();
    let removed =
        backup::prune(&site.profile.paths.backup_dir, keep, &protected).map_err(|cause| {
            ApplyError::Preflight {
                step: "prune".into(),
                cause: Box::new(cause),
            }
        })?;
    Ok((keep, removed))
}
