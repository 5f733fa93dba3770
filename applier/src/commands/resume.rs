//! `airlock-apply resume` (docs/OPERATIONS.md, "If an apply was
//! interrupted"): picks up an apply that was killed or lost power, from its
//! journal alone. Past the point of no return (the new version healthy and
//! its post-start hook done) it completes the commit; before it, it replays
//! the undo records of every step that began. An interrupted `rollback`
//! command is replayed. When two resumes in a row died at the same place,
//! it stops and hands the node to the operator (the loop guard).

use crate::error::ApplyError;
use crate::interrupt::Interrupt;
use crate::lock::lock;
use crate::protocol::Status;
use crate::report::Reporter;
use crate::site::Site;
use crate::state::{ApplyOutcome, AuditAction, State};
use crate::transaction::journal::{fold, Entry};
use crate::transaction::outcome::{record_outcome, Failure};
use crate::transaction::step::{steps_from_pre_start, Step};
use crate::transaction::Transaction;
use airlock_formats::OnInterrupt;

/// How `resume` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// There was nothing to resume.
    Nothing,
    /// The interrupted apply was completed: the new version is installed.
    Completed {
        /// Apply id.
        id: i64,
        /// Version now installed.
        version: String,
    },
    /// The interrupted apply (or `rollback`) was undone or finished: the old version runs.
    RolledBack {
        /// Apply id.
        id: i64,
        /// Version running again.
        version: String,
    },
}

/// Finishes or undoes the interrupted apply, if there is one.
///
/// # Errors
/// [`ApplyError::NeedsOperator`] when the undo does not complete, the apply
/// cannot be replayed, or resuming keeps dying at the same place;
/// [`ApplyError::RolledBack`] when a completed apply's new version no longer
/// starts and was undone; [`ApplyError::Busy`] when an apply is still running.
pub fn resume(
    site: &Site,
    reporter: &Reporter,
    interrupt: &Interrupt,
) -> Result<Resumed, ApplyError> {
    let _lock = lock(site)?;
    let state = State::open(&site.profile.paths.state_dir)?;
    let Some(record) = state.interrupted()? else {
        reporter.event("resume", Status::Ok, "no interrupted apply: nothing to do");
        return Ok(Resumed::Nothing);
    };
    reporter.open_log(&site.log_path(record.id));
    let rows = state.journal(record.id)?;
    let legacy = crate::state::schema::has_legacy_journal(&state, record.id)?;
    let journal = fold(&rows);
    let last = journal.last.clone().unwrap_or_else(|| "nothing".into());
    let cannot = |reason: String, rollback: String| Failure::NeedsOperator {
        step: "resume".into(),
        reason,
        rollback,
    };
    let backup = record
        .backup_dir
        .clone()
        .unwrap_or_else(|| "no backup".into());
    let refusal = if legacy && rows.is_empty() {
        Some(cannot(
            format!("apply #{} was recorded by an older airlock-apply and cannot be resumed", record.id),
            format!("not attempted; check which version runs (`airlock-apply status`), restore from `{backup}` by hand if needed (docs/OPERATIONS.md), then apply again"),
        ))
    } else {
        journal.stuck.as_ref().map(|place| {
            cannot(
                format!("resume was interrupted twice {place}, so it stops retrying"),
                format!("not attempted again; find out why it dies there (the journal of apply #{} has the attempts), check which version runs (`airlock-apply status`), restore from `{backup}` by hand if needed (docs/OPERATIONS.md, \"Rollback did not complete\")", record.id),
            )
        })
    };
    let mut txn = match Transaction::new(
        site,
        state,
        reporter,
        interrupt,
        AuditAction::Resume,
        record.clone(),
    ) {
        Ok(txn) => txn,
        Err(failed) => {
            // An apply whose stored record cannot be read cannot be replayed;
            // close it so the node is not stuck, and say what to check.
            let (mut state, unreadable) = *failed;
            let error = ApplyError::NeedsOperator {
                version: record.to_version.clone(),
                step: "resume".into(),
                reason: format!("apply #{} cannot be resumed: {unreadable}", record.id),
                rollback: format!(
                    "not attempted; check which version runs (`airlock-apply status`), restore from `{backup}` by hand if needed (docs/OPERATIONS.md), then apply again"
                ),
            };
            let _ = record_outcome(
                &mut state,
                reporter,
                &record,
                None,
                AuditAction::Resume,
                ApplyOutcome::NeedsOperator,
                Some(&error.to_string()),
                None,
            );
            return Err(error);
        }
    };
    if let Some(failure) = refusal {
        return Err(txn.fail_with(failure));
    }
    txn.journal(&Entry::Resume)?;
    reporter.event(
        "resume",
        Status::Start,
        &format!(
            "apply #{} ({} -> {}) stopped after `{last}`",
            record.id, record.from_version, record.to_version
        ),
    );

    if let Some(of) = journal.rollback_of {
        // An interrupted `rollback` command: replay it; every action is idempotent.
        let version = super::rollback::replay_rollback(txn, of)?;
        return Ok(Resumed::RolledBack {
            id: record.id,
            version,
        });
    }
    if journal.point_of_no_return {
        // The new version was healthy and its hook ran: make sure it still
        // runs, then commit.
        return match txn.ensure_new_running() {
            Ok(()) => {
                let version = txn.new_version().clone();
                txn.run(&[Step::Commit {
                    version: version.clone(),
                }])?;
                Ok(Resumed::Completed {
                    id: record.id,
                    version: version.to_string(),
                })
            }
            Err(cause) => {
                let problems = txn.replay(
                    &journal.undo,
                    Some(format!("the new version no longer runs: {cause}")),
                );
                Err(txn.fail_with(if problems.is_empty() {
                    Failure::RolledBack {
                        step: "health".into(),
                        cause,
                    }
                } else {
                    Failure::NeedsOperator {
                        step: "health".into(),
                        reason: cause.to_string(),
                        rollback: problems.join("; "),
                    }
                }))
            }
        };
    }
    if let (
        Some(Step::PreStartHook {
            on_interrupt: OnInterrupt::Rerun,
            ..
        }),
        false,
    ) = (&journal.last_step, journal.rolling_back)
    {
        // Interrupted inside a data-format migration the bundle declares
        // idempotent: run it again and carry on; a failure from here rolls
        // everything back, as in the apply.
        reporter.event(
            "resume",
            Status::Ok,
            "the pre_start hook was interrupted and the bundle says to run it again (on_interrupt = rerun)",
        );
        let steps = steps_from_pre_start(site, txn.manifest());
        let version = txn.new_version().to_string();
        txn.with_undo(journal.undo.clone(), journal.node_changed)
            .run(&steps)?;
        return Ok(Resumed::Completed {
            id: record.id,
            version,
        });
    }
    let old = record.from_version.clone();
    if !journal.node_changed {
        txn.replay(&journal.undo, None);
        let note = "interrupted before the service was stopped; nothing on the node had changed";
        txn.close_undone(note)?;
        reporter.event("resume", Status::Ok, note);
        return Ok(Resumed::RolledBack {
            id: record.id,
            version: old,
        });
    }
    let problems = txn.replay(&journal.undo, Some(format!("interrupted after `{last}`")));
    if problems.is_empty() {
        txn.close_undone(&format!(
            "interrupted after `{last}`; rolled back by resume"
        ))?;
        Ok(Resumed::RolledBack {
            id: record.id,
            version: old,
        })
    } else {
        Err(txn.fail_with(Failure::NeedsOperator {
            step: last,
            reason: "the apply was interrupted".into(),
            rollback: problems.join("; "),
        }))
    }
}
