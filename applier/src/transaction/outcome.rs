//! How a transaction ends, decided and recorded in one place: the apply's
//! row in `applies` (with the installed release on a commit) and its audit
//! entry are written only here ([`record_outcome`]), and each ending maps to
//! the one [`ApplyError`] (and so exit code) the operator sees.

use semver::Version;

use super::Transaction;
use crate::error::{ApplyError, StepError, VerifyError};
use crate::protocol::Status;
use crate::report::Reporter;
use crate::state::{ApplyOutcome, ApplyRecord, AuditAction, AuditEntry, State, StateError};
use crate::steps::backup;
use crate::steps::tree::{self, TreeInstall};
use crate::transaction::undo::Undo;

/// How a transaction failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Before the node changed (staging, the `pre_stop` hook): nothing to undo.
    Unchanged {
        /// The step that failed.
        step: String,
        /// Why.
        cause: StepError,
    },
    /// Undone: the old version runs, healthy.
    RolledBack {
        /// The step that failed.
        step: String,
        /// Why.
        cause: StepError,
    },
    /// The undo did not complete, or was not attempted: the operator must act.
    NeedsOperator {
        /// The step that failed, or where an interrupted apply stopped.
        step: String,
        /// Why.
        reason: String,
        /// What the undo could not do.
        rollback: String,
    },
}

/// Writes how apply `record` ended: its `applies` row, the installed release
/// when `installed` is given (name, version, bundle SHA-256), and the audit
/// entry for `action`. A failed audit write is reported, not fatal.
///
/// # Errors
/// [`StateError`] when the `applies` row cannot be written.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_outcome(
    state: &mut State,
    reporter: &Reporter,
    record: &ApplyRecord,
    version: Option<&Version>,
    action: AuditAction,
    outcome: ApplyOutcome,
    error: Option<&str>,
    installed: Option<(&str, &Version, &str)>,
) -> Result<(), StateError> {
    // One time for the apply's end: its row, the installed release and the
    // audit entry (status and history agree).
    let at = crate::state::now();
    state.finish_apply(record.id, outcome, error, installed, at)?;
    let audited = state.audit_at(
        &AuditEntry {
            action,
            bundle: Some(record.bundle.clone()),
            version: version.map(ToString::to_string),
            bundle_sha256: Some(record.bundle_sha256.clone()),
            signers: Some(record.signers.clone()),
            outcome,
            error: error.map(str::to_owned),
        },
        at,
    );
    if let Err(e) = audited {
        reporter.event("audit", Status::Failed, &e.to_string());
    }
    Ok(())
}

impl Transaction<'_> {
    fn write_outcome(
        &mut self,
        outcome: ApplyOutcome,
        error: Option<&str>,
        installed: Option<(&str, &Version, &str)>,
    ) -> Result<(), StateError> {
        record_outcome(
            &mut self.state,
            self.reporter,
            &self.record,
            Some(&self.manifest.version),
            self.action,
            outcome,
            error,
            installed,
        )
    }

    /// The commit step: records the new version as installed and audits,
    /// then prunes old backups and removes the staging folder. Returns the
    /// detail to report.
    ///
    /// # Errors
    /// [`StepError::State`] when the state database cannot record it.
    pub(super) fn commit(&mut self) -> Result<String, StepError> {
        let name = self.manifest.name.clone();
        let new = self.new.clone();
        let sha = self.record.bundle_sha256.clone();
        self.keep_replaced_trees();
        self.write_outcome(ApplyOutcome::Ok, None, Some((&name, &new, &sha)))?;
        if !self.backup_dir.as_os_str().is_empty() {
            match backup::prune(
                &self.site.profile.paths.backup_dir,
                self.site.profile.paths.keep_backups,
                &[&self.backup_dir],
            ) {
                Ok(removed) if !removed.is_empty() => self.reporter.event(
                    "prune backups",
                    Status::Ok,
                    &format!("removed {} old backup(s)", removed.len()),
                ),
                Ok(_) => {}
                Err(e) => self
                    .reporter
                    .event("prune backups", Status::Failed, &e.to_string()),
            }
        }
        if self.stage_dir.exists() {
            let _ = fs_err::remove_dir_all(&self.stage_dir);
        }
        Ok(format!("{name} {new} installed"))
    }

    /// Moves each tree the apply replaced from beside its folder into the
    /// backup folder and records it in `backup.json`, so `rollback` can put
    /// it back and pruning removes it with its backup. The new version is
    /// healthy by now: a failure is reported and leaves the old tree where
    /// it is (`.NAME.airlock-old-ID`, where `rollback` finds it too).
    fn keep_replaced_trees(&mut self) {
        let replaced: Vec<TreeInstall> = self
            .undo
            .iter()
            .filter_map(|u| match u {
                Undo::RestoreTree { install, .. } if install.existed => Some(install.clone()),
                _ => None,
            })
            .collect();
        if replaced.is_empty() || self.backup_dir.as_os_str().is_empty() {
            return;
        }
        let result = (|| -> Result<usize, StepError> {
            let mut manifest = backup::load(&self.backup_dir)?;
            let mut kept = 0;
            for t in &replaced {
                if tree::identity(&t.old)?.is_none() {
                    continue;
                }
                let record = tree::keep_in_backup(&self.backup_dir, &t.name, &t.target, &t.old)?;
                manifest.trees.retain(|r| r.name != record.name);
                manifest.trees.push(record);
                kept += 1;
            }
            backup::complete(&self.backup_dir, &manifest)?;
            Ok(kept)
        })();
        match result {
            Ok(0) => {}
            Ok(n) => self.reporter.event(
                "keep replaced trees",
                Status::Ok,
                &format!("{n} tree(s) moved into {}", self.backup_dir.display()),
            ),
            Err(e) => self.reporter.event(
                "keep replaced trees",
                Status::Failed,
                &format!("{e}; the old tree stays beside its folder, where `rollback` finds it"),
            ),
        }
    }

    /// Records a failure and returns the error to report.
    pub(crate) fn fail_with(&mut self, failure: Failure) -> ApplyError {
        let version = self.manifest.version.to_string();
        let (outcome, error) = match failure {
            Failure::Unchanged { step, cause } => match cause {
                StepError::Verify(refused @ VerifyError::Refused { .. }) => {
                    (ApplyOutcome::Refused, ApplyError::from(refused))
                }
                cause => (
                    ApplyOutcome::Failed,
                    ApplyError::Preflight {
                        step,
                        cause: Box::new(cause),
                    },
                ),
            },
            Failure::RolledBack { step, cause } => (
                ApplyOutcome::RolledBack,
                ApplyError::RolledBack {
                    version,
                    old_version: self.old.to_string(),
                    step,
                    cause: Box::new(cause),
                },
            ),
            Failure::NeedsOperator {
                step,
                reason,
                rollback,
            } => (
                ApplyOutcome::NeedsOperator,
                ApplyError::NeedsOperator {
                    version,
                    step,
                    reason,
                    rollback,
                },
            ),
        };
        match self.write_outcome(outcome, Some(&error.to_string()), None) {
            Ok(()) => error,
            Err(e) => ApplyError::NeedsOperator {
                version: self.manifest.version.to_string(),
                step: "recording the outcome".into(),
                reason: error.to_string(),
                rollback: format!(
                    "the state database could not record it ({e}); run `airlock-apply resume` once it is writable again"
                ),
            },
        }
    }

    /// Records that `resume` undid the apply (the old version runs); `note` says why.
    ///
    /// # Errors
    /// [`ApplyError::NeedsOperator`] when the state database cannot record it.
    pub(crate) fn close_undone(&mut self, note: &str) -> Result<(), ApplyError> {
        self.write_outcome(ApplyOutcome::RolledBack, Some(note), None)
            .map_err(|e| ApplyError::NeedsOperator {
                version: self.manifest.version.to_string(),
                step: "recording the outcome".into(),
                reason: note.into(),
                rollback: format!(
                    "the node was rolled back, but the state database could not record it ({e}); run `airlock-apply resume` once it is writable again"
                ),
            })
    }
}
