//! `airlock-apply resume` and `airlock-apply rollback`.
//!
//! `resume` picks up an apply that was interrupted (killed, power cut): before
//! the point of no return (the new version healthy and its post-start hook
//! done) it rolls back; after it, it completes the commit. `rollback` returns
//! a node to the version before the last apply, from that apply's backup.

use std::path::PathBuf;

use airlock_formats::Manifest;
use semver::Version;

use crate::backup;
use crate::error::ApplyError;
use crate::interrupt::Interrupt;
use crate::lock::lock;
use crate::report::Reporter;
use crate::run::{migrated_databases, raft_refusal, steps, Context, Done, Run};
use crate::site::Site;
use crate::state::{ApplyRecord, NewApply, State};

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
    /// The interrupted apply was undone: the old version runs.
    RolledBack {
        /// Apply id.
        id: i64,
        /// Version running again.
        version: String,
    },
}

fn state_err(site: &Site, reason: String) -> ApplyError {
    ApplyError::State {
        path: site.profile.paths.state_dir.join(crate::state::STATE_DB),
        reason,
    }
}

fn context_of(site: &Site, record: &ApplyRecord) -> Result<Context, ApplyError> {
    let manifest = Manifest::from_json(record.manifest_json.as_bytes())
        .map_err(|e| state_err(site, format!("apply #{}: stored manifest: {e}", record.id)))?;
    let old = Version::parse(&record.from_version)
        .map_err(|e| state_err(site, format!("apply #{}: from version: {e}", record.id)))?;
    Ok(Context {
        manifest,
        old,
        bundle: record.bundle.clone(),
        sha256: record.bundle_sha256.clone(),
        signers: record.signers.clone(),
    })
}

/// Finishes or undoes the interrupted apply, if there is one.
///
/// # Errors
/// [`ApplyError::NeedsOperator`] when the undo does not complete;
/// [`ApplyError::Busy`] when an apply is still running.
pub fn resume(
    site: &Site,
    reporter: &Reporter,
    interrupt: &Interrupt,
) -> Result<Resumed, ApplyError> {
    let _lock = lock(site)?;
    let mut state = State::open(&site.profile.paths.state_dir)?;
    let Some(record) = state.interrupted()? else {
        reporter.event("resume", "ok", "no interrupted apply: nothing to do");
        return Ok(Resumed::Nothing);
    };
    let rows = state.journal_rows(record.id)?;
    let ctx = match context_of(site, &record) {
        Ok(ctx) => ctx,
        Err(e) => {
            // An apply recorded before the journal kept its manifest (or a
            // damaged record) cannot be replayed; close it so the node is not
            // stuck, and say what to check.
            let error = ApplyError::NeedsOperator {
                version: record.to_version.clone(),
                step: Done::last_step(&rows),
                reason: format!("apply #{} cannot be resumed: {e}", record.id),
                rollback: format!(
                    "not attempted; check which version runs (`airlock-apply status`), restore from `{}` by hand if needed (docs/OPERATIONS.md), then apply again",
                    record.backup_dir.as_deref().unwrap_or("no backup")
                ),
            };
            let _ = state.finish_apply_simple(record.id, "needs-operator", &error.to_string());
            return Err(error);
        }
    };
    let mut run = Run::new(site, state, reporter, record.id, ctx, interrupt);
    reporter.event(
        "resume",
        "start",
        &format!(
            "apply #{} ({} -> {}) stopped after `{}`",
            record.id,
            record.from_version,
            record.to_version,
            Done::last_step(&rows)
        ),
    );

    if let Some(of) = rows.iter().find(|r| r.step == steps::ROLLBACK_OF) {
        // An interrupted `rollback` command: do it again; every step of it is idempotent.
        let of_id: i64 = of
            .detail
            .parse()
            .map_err(|_| state_err(site, format!("bad journal row `{}`", of.detail)))?;
        return redo_rollback(run, of_id).map(|version| Resumed::RolledBack {
            id: record.id,
            version,
        });
    }

    let done = Done::from_journal(&rows, record.backup_dir.as_deref());
    let new = run.ctx.manifest.version.clone();
    if done.healthy {
        // Past the point of no return: the new version was healthy. Make sure it still runs, then commit.
        let ready = run.wait_ready(&new).or_else(|_| run.start(&new));
        match ready {
            Ok(()) => {
                run.commit(
                    "resume",
                    record.backup_dir.as_deref().map(std::path::Path::new),
                )?;
                return Ok(Resumed::Completed {
                    id: record.id,
                    version: new.to_string(),
                });
            }
            Err(reason) => {
                let e = run.fail_and_undo("resume", steps::START.into(), reason, &done);
                return Err(e);
            }
        }
    }
    if !done.stopped {
        let note = "interrupted before the service was stopped; nothing on the node had changed";
        let _ = run
            .state
            .finish_apply_simple(record.id, "rolled-back", note);
        run.audit("resume", "rolled-back", Some(note.into()));
        run.reporter.event("resume", "ok", note);
        let _ = std::fs::remove_dir_all(&run.stage_dir);
        return Ok(Resumed::RolledBack {
            id: record.id,
            version: run.ctx.old.to_string(),
        });
    }
    let old = run.ctx.old.to_string();
    let problems = run.undo(&done);
    let _ = std::fs::remove_dir_all(&run.stage_dir);
    if problems.is_empty() {
        let note = format!(
            "interrupted after `{}`; rolled back by resume",
            Done::last_step(&rows)
        );
        let _ = run
            .state
            .finish_apply_simple(record.id, "rolled-back", &note);
        run.audit("resume", "rolled-back", Some(note));
        run.reporter.event(
            steps::ROLLBACK,
            "ok",
            &format!("the node runs {old} again, healthy"),
        );
        Ok(Resumed::RolledBack {
            id: record.id,
            version: old,
        })
    } else {
        let error = ApplyError::NeedsOperator {
            version: run.ctx.manifest.version.to_string(),
            step: Done::last_step(&rows),
            reason: "the apply was interrupted".into(),
            rollback: problems.join("; "),
        };
        let _ = run
            .state
            .finish_apply_simple(record.id, "needs-operator", &error.to_string());
        run.audit("resume", "needs-operator", Some(error.to_string()));
        Err(error)
    }
}

/// What `rollback` would undo: the last completed apply and its backup.
#[derive(Debug, Clone)]
pub struct RollbackPlan {
    /// The apply to undo.
    pub apply: ApplyRecord,
    /// Its backup folder.
    pub backup_dir: PathBuf,
    /// Databases its migrations changed; they are restored, losing later writes.
    pub databases: Vec<String>,
}

/// Finds the apply `rollback` would undo and checks that it can be undone,
/// including the Raft safety rule. Changes nothing.
///
/// # Errors
/// [`ApplyError::Preflight`] saying why not and what to do instead.
pub fn rollback_plan(state: &State) -> Result<RollbackPlan, ApplyError> {
    let refuse = |reason: String| ApplyError::Preflight {
        step: "rollback".into(),
        reason,
    };
    crate::apply::refuse_if_interrupted(state)?;
    let apply = state
        .recent_applies(50)?
        .into_iter()
        .find(|a| a.outcome == "ok" && !a.bundle.starts_with("rollback of"))
        .ok_or_else(|| refuse("no completed apply to roll back".into()))?;
    let installed = state.installed()?.map(|i| i.version.to_string());
    if installed.as_deref() != Some(apply.to_version.as_str()) {
        return Err(refuse(format!(
            "the installed version is {}, not {} which apply #{} installed; it was rolled back already or replaced",
            installed.unwrap_or_else(|| "unknown".into()),
            apply.to_version,
            apply.id
        )));
    }
    let backup_dir = PathBuf::from(apply.backup_dir.clone().unwrap_or_default());
    let record = backup::load(&backup_dir).map_err(|e| {
        refuse(format!(
            "the backup of apply #{} is not usable: {e}",
            apply.id
        ))
    })?;
    let problems = backup::verify(&backup_dir, &record);
    if !problems.is_empty() {
        return Err(refuse(format!(
            "the backup `{}` is damaged: {}",
            backup_dir.display(),
            problems.join("; ")
        )));
    }
    let manifest = Manifest::from_json(apply.manifest_json.as_bytes())
        .map_err(|e| refuse(format!("stored manifest of apply #{}: {e}", apply.id)))?;
    if let Some(raft) = &record.raft {
        let diff = backup::diff_tree(raft).map_err(refuse)?;
        if !diff.is_empty() && !manifest.rolling_allowed {
            return Err(refuse(raft_refusal(
                &raft.source.display().to_string(),
                &manifest.version,
                diff.len(),
            )));
        }
    }
    let databases = migrated_databases(&state.journal_rows(apply.id)?)
        .into_iter()
        .collect();
    Ok(RollbackPlan {
        apply,
        backup_dir,
        databases,
    })
}

/// Returns the node to the version before the last apply, from its backup:
/// binaries and files back, databases its migrations changed restored (later
/// writes to them are lost: the caller confirmed), the Raft data kept (the
/// member ran since the backup; [`rollback_plan`] refused if that is unsafe),
/// the old version started and healthy.
///
/// # Errors
/// [`ApplyError::Preflight`] when refused (nothing changed);
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
        return Err(ApplyError::Preflight {
            step: "rollback".into(),
            reason: "not confirmed; nothing changed".into(),
        });
    }
    let last = &plan.apply;
    let id = state.begin_apply(&NewApply {
        bundle: &format!("rollback of #{}", last.id),
        name: "rollback",
        from: &last.to_version,
        to: &last.from_version,
        manifest_json: &last.manifest_json,
        signers: &last.signers,
    })?;
    state.journal(id, steps::ROLLBACK_OF, &last.id.to_string())?;
    let ctx = context_of(site, last)?;
    let run = Run::new(site, state, reporter, id, ctx, interrupt);
    redo_rollback(run, last.id)
}

/// The body of `rollback` (also run again by `resume`): stop, restore from the
/// backup of apply `of`, start the old version, record it.
fn redo_rollback(mut run: Run<'_>, of: i64) -> Result<String, ApplyError> {
    let records = run.state.recent_applies(1000)?;
    let last = records
        .iter()
        .find(|a| a.id == of)
        .ok_or_else(|| state_err(run.site, format!("apply #{of} is not recorded")))?;
    let backup_dir = PathBuf::from(last.backup_dir.clone().unwrap_or_default());
    let record = backup::load(&backup_dir).map_err(|e| ApplyError::Preflight {
        step: "rollback".into(),
        reason: e,
    })?;
    let migrated = migrated_databases(&run.state.journal_rows(of)?);
    let done = Done {
        stopped: true,
        installed: record.installed.clone(),
        migrated,
        install_began: true,
        started: true,
        healthy: false,
        backup: Some((backup_dir, record)),
    };
    let old = run.ctx.old.clone();
    let name = run.ctx.manifest.name.clone();
    let problems = run.undo(&done);
    if !problems.is_empty() {
        let error = ApplyError::NeedsOperator {
            version: old.to_string(),
            step: steps::ROLLBACK.into(),
            reason: format!("rolling back apply #{of}"),
            rollback: problems.join("; "),
        };
        let _ = run
            .state
            .finish_apply_simple(run.apply_id, "needs-operator", &error.to_string());
        run.audit("rollback", "needs-operator", Some(error.to_string()));
        return Err(error);
    }
    run.state
        .finish_apply(run.apply_id, "ok", None, Some((&name, &old, "")))
        .map_err(|e| ApplyError::NeedsOperator {
            version: old.to_string(),
            step: steps::COMMIT.into(),
            reason: e.to_string(),
            rollback: format!("{old} runs again, but the state database does not say so; repair it before the next apply"),
        })?;
    run.audit("rollback", "ok", None);
    run.reporter.event(
        steps::ROLLBACK,
        "ok",
        &format!("the node runs {old} again, healthy"),
    );
    Ok(old.to_string())
}
