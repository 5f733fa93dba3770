//! `airlock-apply rollback` (docs/OPERATIONS.md, "Undo a completed apply"):
//! returns the node to the version before the last completed apply by
//! replaying that apply's undo records, newest first, from its journal.

use std::path::PathBuf;

use airlock_formats::Manifest;

use crate::commands::apply::{refuse_if_interrupted, unreadable};
use crate::error::{ApplyError, RollbackRefusal, StepError};
use crate::interrupt::Interrupt;
use crate::lock::lock;
use crate::report::Reporter;
use crate::site::Site;
use crate::state::schema::has_legacy_journal;
use crate::state::{ApplyKind, ApplyRecord, AuditAction, NewApply, State};
use crate::steps::backup;
use crate::transaction::journal::{fold, Entry};
use crate::transaction::outcome::Failure;
use crate::transaction::step::Step;
use crate::transaction::undo::Undo;
use crate::transaction::Transaction;

/// What `rollback` would undo: the last completed apply, its backup and its
/// undo records.
#[derive(Debug, Clone)]
pub struct RollbackPlan {
    /// The apply to undo.
    pub apply: ApplyRecord,
    /// Its backup folder.
    pub backup_dir: PathBuf,
    /// Databases its migrations changed; they are restored, losing later writes.
    pub databases: Vec<String>,
    /// Its undo records, oldest first (replayed newest first).
    pub undo: Vec<Undo>,
}

fn refuse(reason: RollbackRefusal) -> ApplyError {
    ApplyError::RollbackRefused(reason)
}

/// Finds the apply `rollback` would undo and checks that it can be undone,
/// including the Raft safety rule. Changes nothing.
///
/// # Errors
/// [`ApplyError::RollbackRefused`] saying why not and what to do instead.
pub fn rollback_plan(state: &State) -> Result<RollbackPlan, ApplyError> {
    refuse_if_interrupted(state)?;
    let apply = state
        .last_completed_apply()?
        .ok_or_else(|| refuse(RollbackRefusal::NothingToRollBack))?;
    let installed = state.installed()?.map(|i| i.version.to_string());
    if installed.as_deref() != Some(apply.to_version.as_str()) {
        return Err(refuse(RollbackRefusal::NotInstalled {
            installed: installed.unwrap_or_else(|| "unknown".into()),
            version: apply.to_version.clone(),
            id: apply.id,
        }));
    }
    let backup_dir = PathBuf::from(apply.backup_dir.clone().unwrap_or_default());
    let record = backup::load(&backup_dir).map_err(|cause| {
        refuse(RollbackRefusal::BackupUnusable {
            id: apply.id,
            cause: Box::new(cause),
        })
    })?;
    let problems = backup::verify(&backup_dir, &record).map_err(|cause| {
        refuse(RollbackRefusal::BackupUnusable {
            id: apply.id,
            cause: Box::new(cause),
        })
    })?;
    if !problems.is_empty() {
        return Err(refuse(RollbackRefusal::BackupDamaged {
            dir: backup_dir,
            problems: problems.iter().map(ToString::to_string).collect(),
        }));
    }
    let manifest = Manifest::from_json(apply.manifest_json.as_bytes()).map_err(|source| {
        refuse(RollbackRefusal::Manifest {
            id: apply.id,
            source,
        })
    })?;
    let rows = state.journal(apply.id)?;
    if rows.is_empty() && has_legacy_journal(state, apply.id)? {
        return Err(refuse(RollbackRefusal::NoUndoRecords {
            id: apply.id,
            backup: backup_dir.display().to_string(),
        }));
    }
    let undo = fold(&rows).undo;
    for u in &undo {
        if let Undo::SettleRaft { record, .. } = u {
            let diff = backup::diff_tree(record).map_err(|cause| {
                refuse(RollbackRefusal::BackupUnusable {
                    id: apply.id,
                    cause: Box::new(cause),
                })
            })?;
            if !diff.is_empty() && !manifest.rolling_allowed {
                return Err(refuse(RollbackRefusal::Raft(Box::new(
                    StepError::RaftChanged {
                        folder: record.source.clone(),
                        version: manifest.version.clone(),
                        changed: diff.len(),
                    },
                ))));
            }
        }
    }
    let databases = undo
        .iter()
        .flat_map(Undo::databases)
        .map(str::to_owned)
        .collect();
    Ok(RollbackPlan {
        apply,
        backup_dir,
        databases,
        undo,
    })
}

/// Returns the node to the version before the last apply: the new version
/// stopped, the databases its migrations changed restored (later writes to
/// them are lost: `confirm` asked), its files put back, the Raft data kept
/// ([`rollback_plan`] refused if that is unsafe), the old version started
/// and healthy, and recorded as installed. Returns that version.
///
/// # Errors
/// [`ApplyError::RollbackRefused`] when refused (nothing changed);
/// [`ApplyError::NeedsOperator`] when it did not complete.
pub fn rollback(
    site: &Site,
    reporter: &Reporter,
    interrupt: &Interrupt,
    confirm: impl FnOnce(&RollbackPlan) -> bool,
) -> Result<String, ApplyError> {
    let _lock = lock(site)?;
    let state = State::open(&site.profile.paths.state_dir)?;
    let plan = rollback_plan(&state)?;
    if !confirm(&plan) {
        return Err(refuse(RollbackRefusal::NotConfirmed));
    }
    let last = &plan.apply;
    let id = state.begin_apply(&NewApply {
        kind: ApplyKind::Rollback,
        rollback_of: Some(last.id),
        bundle: &format!("rollback of #{}", last.id),
        name: &last.name,
        from: &last.to_version,
        to: &last.from_version,
        manifest_json: &last.manifest_json,
        signers: &last.signers,
    })?;
    reporter.open_log(&site.log_path(id));
    let record = state.require_apply(id)?;
    let mut txn = Transaction::new(
        site,
        state,
        reporter,
        interrupt,
        AuditAction::Rollback,
        record,
    )
    .map_err(|failed| unreadable(&failed))?;
    txn.journal(&Entry::RollbackOf { apply: last.id })?;
    replay_rollback(txn, last.id)
}

/// The body of `rollback` (also run again by `resume`): replays the undo
/// records of apply `of`, newest first, then commits the old version.
///
/// # Errors
/// [`ApplyError::NeedsOperator`] when it did not complete.
pub(crate) fn replay_rollback(mut txn: Transaction<'_>, of: i64) -> Result<String, ApplyError> {
    let undo = fold(&txn.journal_rows(of)?).undo;
    let problems = txn.replay(&undo, Some(format!("rolling back apply #{of}")));
    if !problems.is_empty() {
        return Err(txn.fail_with(Failure::NeedsOperator {
            step: "rollback".into(),
            reason: format!("rolling back apply #{of}"),
            rollback: problems.join("; "),
        }));
    }
    let version = txn.new_version().clone();
    txn.run(&[Step::Commit {
        version: version.clone(),
    }])?;
    Ok(version.to_string())
}
