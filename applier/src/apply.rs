//! `airlock-apply apply` on one node: the steps of DESIGN.md "Applying one
//! node", each announced in the journal before it acts, and an automatic
//! rollback when any step after the stop fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_formats::Manifest;
use semver::Version;

use crate::error::ApplyError;
use crate::interrupt::Interrupt;
use crate::lock::{lock, LOCK_FILE};
use crate::report::Reporter;
use crate::run::{install_target, preflight_failure, steps, Context, Done, Run};
use crate::site::Site;
use crate::stage::{self, StageSink};
use crate::state::{AuditEntry, NewApply, State};
use crate::verify::{read_and_verify, VerifyOptions};

/// Free space kept in reserve beyond what staging and backups need: 5 % plus 16 MiB.
pub fn with_margin(bytes: u64) -> u64 {
    bytes + bytes / 20 + 16 * 1024 * 1024
}

/// What a successful apply did.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    /// Version before.
    pub from: Version,
    /// Version now.
    pub to: Version,
    /// The backup folder.
    pub backup_dir: PathBuf,
    /// Migrations applied, as `database:version`.
    pub migrations: Vec<String>,
    /// Time from the stop to healthy on the new version.
    pub downtime: Duration,
}

/// Space an apply needs: per folder, the bytes it will write (without margin).
#[derive(Debug, Clone)]
pub struct SpaceNeed {
    /// The folder.
    pub dir: PathBuf,
    /// What goes there.
    pub what: &'static str,
    /// Bytes it will write there, without margin.
    pub bytes: u64,
    /// Bytes free there now.
    pub available: u64,
}

impl SpaceNeed {
    /// Whether the need, with margin, fits.
    pub fn fits(&self) -> bool {
        self.available >= with_margin(self.bytes)
    }
}

/// Bytes the backup of this site will take for `manifest`.
pub fn backup_size(site: &Site, manifest: &Manifest) -> u64 {
    let data = &site.profile.data;
    let mut need: u64 = data
        .databases
        .values()
        .map(|p| {
            stage::tree_size(p) + stage::tree_size(&PathBuf::from(format!("{}-wal", p.display())))
        })
        .sum();
    need += data.raft_dir.as_deref().map_or(0, stage::tree_size);
    need += data
        .config_files
        .iter()
        .map(|p| stage::tree_size(p))
        .sum::<u64>();
    need += manifest
        .files
        .iter()
        .filter_map(|e| install_target(site, e))
        .map(|p| stage::tree_size(&p))
        .sum::<u64>();
    need
}

/// What staging and backups need and what is free, per filesystem.
///
/// # Errors
/// [`ApplyError::Io`] when free space cannot be read.
pub fn space_needs(site: &Site, manifest: &Manifest) -> Result<Vec<SpaceNeed>, ApplyError> {
    let staging = site.staging_dir();
    let backups = site.profile.paths.backup_dir.clone();
    let backup_need = backup_size(site, manifest);
    let mut needs = vec![(staging.clone(), "staging", manifest.payload.unpacked_size)];
    if stage::device_of(&staging) == stage::device_of(&backups) {
        needs[0] = (
            staging,
            "staging and backups",
            manifest.payload.unpacked_size + backup_need,
        );
    } else {
        needs.push((backups, "backups", backup_need));
    }
    needs
        .into_iter()
        .map(|(dir, what, bytes)| {
            let available = stage::available_space(&dir).map_err(ApplyError::io(format!(
                "checking free space at `{}`",
                dir.display()
            )))?;
            Ok(SpaceNeed {
                dir,
                what,
                bytes,
                available,
            })
        })
        .collect()
}

fn check_space(site: &Site, manifest: &Manifest, reporter: &Reporter) -> Result<(), ApplyError> {
    for need in space_needs(site, manifest)? {
        let wanted = with_margin(need.bytes);
        if !need.fits() {
            return Err(ApplyError::Preflight {
                step: "disk space check".into(),
                reason: format!(
                    "{} need {} MiB at `{}` (with a 5 % + 16 MiB margin) but only {} MiB are free; free space there or point paths.backup_dir / paths.staging_dir elsewhere",
                    need.what,
                    wanted >> 20,
                    need.dir.display(),
                    need.available >> 20
                ),
            });
        }
        reporter.event(
            "disk space",
            "ok",
            &format!(
                "{}: need {} MiB, {} MiB free at {}",
                need.what,
                wanted >> 20,
                need.available >> 20,
                need.dir.display()
            ),
        );
    }
    Ok(())
}

fn audit_failure(state: &State, bundle: &Path, e: &ApplyError) {
    let _ = state.audit(&AuditEntry {
        action: "apply".into(),
        bundle: Some(bundle.display().to_string()),
        outcome: if matches!(e, ApplyError::Refused { .. }) {
            "refused"
        } else {
            "failed"
        }
        .into(),
        error: Some(e.to_string()),
        ..Default::default()
    });
}

/// Refuses to start while an earlier apply is unfinished.
///
/// # Errors
/// [`ApplyError::Interrupted`].
pub fn refuse_if_interrupted(state: &State) -> Result<(), ApplyError> {
    match state.interrupted()? {
        Some(r) => Err(ApplyError::Interrupted {
            id: r.id,
            from: r.from_version,
            to: r.to_version,
        }),
        None => Ok(()),
    }
}

/// Applies the bundle at `bundle` to the node `site` describes.
///
/// # Errors
/// [`ApplyError::Refused`] or [`ApplyError::Preflight`] when nothing changed;
/// [`ApplyError::RolledBack`] when a step failed and the old version runs again;
/// [`ApplyError::NeedsOperator`] when the rollback did not complete;
/// [`ApplyError::Busy`] or [`ApplyError::Interrupted`] when it cannot begin.
pub fn apply(
    site: &Site,
    bundle: &Path,
    opts: VerifyOptions,
    reporter: &Reporter,
    interrupt: &Interrupt,
) -> Result<ApplyReport, ApplyError> {
    let _lock = lock(site)?;
    reporter.event(
        "lock",
        "ok",
        &site
            .profile
            .paths
            .state_dir
            .join(LOCK_FILE)
            .display()
            .to_string(),
    );
    let state = State::open(&site.profile.paths.state_dir)?;
    refuse_if_interrupted(&state)?;

    // Authenticate and check the header first (no payload read), so the
    // disk-space check knows the sizes before anything is written.
    reporter.event("verify", "start", &bundle.display().to_string());
    let header = read_and_verify(site, Some(&state), bundle, opts, None)
        .inspect_err(|e| audit_failure(&state, bundle, e))?;
    let m = header.header.manifest.clone();
    reporter.event(
        "verify",
        "ok",
        &format!(
            "{} {} -> {}, signed by {}",
            m.name,
            header.installed.version,
            m.version,
            header.signers_text()
        ),
    );
    check_space(site, &m, reporter).inspect_err(|e| audit_failure(&state, bundle, e))?;

    let manifest_json = String::from_utf8_lossy(&header.header.manifest_bytes).into_owned();
    let apply_id = state.begin_apply(&NewApply {
        bundle: &bundle.display().to_string(),
        name: &m.name,
        from: &header.installed.version.to_string(),
        to: &m.version.to_string(),
        manifest_json: &manifest_json,
        signers: &header.signers_text(),
    })?;
    let ctx = Context {
        manifest: m.clone(),
        old: header.installed.version.clone(),
        bundle: bundle.display().to_string(),
        sha256: String::new(),
        signers: header.signers_text(),
    };
    let mut run = Run::new(site, state, reporter, apply_id, ctx, interrupt);

    // Step 3: stage. Every byte is checked against the signed manifest again.
    let stage_dir = run.stage_dir.clone();
    if let Err(reason) = run.step(steps::STAGE, &stage_dir.display().to_string()) {
        return Err(preflight_failure(&mut run, "apply", steps::STAGE, reason));
    }
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(m.payload.unpacked_size)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let bar_handle = bar.clone();
    let staged = StageSink::create(&stage_dir, Box::new(move |n| bar_handle.inc(n)))
        .map_err(ApplyError::io(format!(
            "creating staging folder `{}`",
            stage_dir.display()
        )))
        .and_then(|mut sink| {
            read_and_verify(site, Some(&run.state), bundle, opts, Some(&mut sink))
        });
    bar.finish_and_clear();
    let verified = match staged {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&stage_dir);
            let label = if matches!(e, ApplyError::Refused { .. }) {
                "refused"
            } else {
                "failed"
            };
            let _ = run
                .state
                .finish_apply_simple(apply_id, label, &e.to_string());
            audit_failure(&run.state, bundle, &e);
            return Err(e);
        }
    };
    run.ctx.sha256 = verified.bundle_sha256.to_hex();
    if let Err(e) = run.state.set_bundle_sha256(apply_id, &run.ctx.sha256) {
        let _ = std::fs::remove_dir_all(&stage_dir);
        return Err(preflight_failure(
            &mut run,
            "apply",
            steps::STAGE,
            e.to_string(),
        ));
    }
    reporter.event(
        steps::STAGE,
        "ok",
        &format!(
            "{} files, {} bytes, every SHA-256 matched",
            m.files.len(),
            m.payload.unpacked_size
        ),
    );

    let result = run_after_stage(&mut run);
    let _ = std::fs::remove_dir_all(&stage_dir);
    result
}

fn run_after_stage(run: &mut Run<'_>) -> Result<ApplyReport, ApplyError> {
    // Before the stop, a failure changes nothing.
    if let Err(reason) = run.run_hook(steps::PRE_STOP) {
        return Err(preflight_failure(run, "apply", "pre_stop hook", reason));
    }
    let mut done = Done::default();
    let started = Instant::now();
    let outcome = run.forward(&mut done);
    let downtime = started.elapsed();
    let migrations = match outcome {
        Ok(m) => m,
        Err((step, reason)) => return Err(run.fail_and_undo("apply", step, reason, &done)),
    };
    let backup_dir = done
        .backup
        .as_ref()
        .map(|b| b.0.clone())
        .unwrap_or_default();
    run.commit("apply", Some(&backup_dir))?;
    Ok(ApplyReport {
        from: run.ctx.old.clone(),
        to: run.ctx.manifest.version.clone(),
        backup_dir,
        migrations,
        downtime,
    })
}
