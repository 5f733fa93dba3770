//! `airlock-apply apply` on one node (docs/OPERATIONS.md, "Apply the
//! bundle"): lock, verify the header, check free space, record the apply,
//! then run the planned steps as one transaction.

use std::path::{Path, PathBuf};

use airlock_formats::Manifest;

use crate::error::{ApplyError, StepError};
use crate::interrupt::Interrupt;
use crate::lock::{lock, LOCK_FILE};
use crate::protocol::Status;
use crate::report::Reporter;
use crate::site::Site;
use crate::state::{ApplyKind, ApplyOutcome, AuditAction, AuditEntry, NewApply, State};
use crate::steps::install::{install_target, Staging};
use crate::steps::stage;
use crate::transaction::step::planned_steps;
use crate::transaction::{ApplyReport, Source, Transaction};
use crate::verify::{read_and_verify, VerifyOptions};

/// Free space kept in reserve beyond what staging and backups need: 5 % plus
/// 16 MiB, saturating (a signed manifest may still declare absurd sizes).
pub fn with_margin(bytes: u64) -> u64 {
    bytes
        .saturating_add(bytes / 20)
        .saturating_add(16 * 1024 * 1024)
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
    let databases = data
        .databases
        .values()
        .flat_map(|p| [p.clone(), PathBuf::from(format!("{}-wal", p.display()))]);
    databases
        .chain(data.raft_dir.iter().cloned())
        .chain(data.config_files.iter().cloned())
        .chain(
            manifest
                .files
                .iter()
                .filter_map(|e| install_target(site, e)),
        )
        .fold(0u64, |need, p| need.saturating_add(stage::tree_size(&p)))
}

/// What staging and backups need and what is free, per filesystem.
///
/// # Errors
/// [`ApplyError::Io`] when free space cannot be read.
pub fn space_needs(site: &Site, manifest: &Manifest) -> Result<Vec<SpaceNeed>, ApplyError> {
    let staging = site.staging_dir();
    let backups = site.profile.paths.backup_dir.clone();
    let backup_need = backup_size(site, manifest);
    // What installs by rename is staged beside its target, on that
    // target's filesystem; the rest goes to the staging folder.
    let mut beside: Vec<(PathBuf, u64)> = Vec::new();
    let mut routed = 0u64;
    let installs = manifest
        .files
        .iter()
        .filter_map(|e| install_target(site, e).map(|t| (t, e.size)))
        .chain(manifest.trees.iter().map(|t| {
            let bytes = manifest
                .tree_files(&t.name)
                .map(|(f, _)| f.size)
                .sum::<u64>();
            (crate::transaction::step::tree_target(site, t), bytes)
        }));
    for (target, bytes) in installs {
        if Staging::for_target(&target) != Staging::Beside {
            continue;
        }
        routed = routed.saturating_add(bytes);
        let dir = target.parent().map(PathBuf::from).unwrap_or_default();
        match beside
            .iter_mut()
            .find(|(d, _)| stage::device_of(d) == stage::device_of(&dir))
        {
            Some((_, b)) => *b = b.saturating_add(bytes),
            None => beside.push((dir, bytes)),
        }
    }
    let central = manifest.payload.unpacked_size.saturating_sub(routed);
    let mut needs = vec![(staging.clone(), "staging", central)];
    if stage::device_of(&staging) == stage::device_of(&backups) {
        needs[0] = (
            staging.clone(),
            "staging and backups",
            central.saturating_add(backup_need),
        );
    } else {
        needs.push((backups, "backups", backup_need));
    }
    for (dir, bytes) in beside {
        match needs
            .iter_mut()
            .find(|(d, _, _)| stage::device_of(d) == stage::device_of(&dir))
        {
            Some((_, _, b)) => *b = b.saturating_add(bytes),
            None => needs.push((dir, "files staged beside their targets", bytes)),
        }
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
                cause: Box::new(StepError::NoSpace {
                    what: need.what,
                    dir: need.dir,
                    needed: wanted,
                    available: need.available,
                }),
            });
        }
        reporter.event(
            "disk space",
            Status::Ok,
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

/// Records a refusal or failure that happened before an apply record
/// existed (verify, free space) in the audit log.
fn audit_early_failure(state: &State, bundle: &Path, e: &ApplyError) {
    let _ = state.audit(&AuditEntry {
        action: AuditAction::Apply,
        bundle: Some(bundle.display().to_string()),
        outcome: if matches!(e, ApplyError::Refused { .. }) {
            ApplyOutcome::Refused
        } else {
            ApplyOutcome::Failed
        },
        error: Some(e.to_string()),
        ..AuditEntry::default()
    });
}

/// The error for an apply record whose stored manifest does not parse.
pub(crate) fn unreadable(failed: &(State, crate::transaction::Unreadable)) -> ApplyError {
    ApplyError::State(crate::state::StateError::Invalid {
        path: failed.0.path().to_owned(),
        what: failed.1.to_string(),
    })
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

/// How an apply ended well.
#[derive(Debug, Clone)]
pub enum Applied {
    /// The bundle's version is installed now.
    Installed(ApplyReport),
    /// It was installed already: nothing was done (`--reinstall` forces it).
    AlreadyInstalled {
        /// Bundle name.
        name: String,
        /// The version.
        version: semver::Version,
    },
}

/// Applies the bundle at `bundle` to the node `site` describes.
///
/// # Errors
/// [`ApplyError::Refused`] or [`ApplyError::Preflight`] when nothing changed;
/// [`ApplyError::RolledBack`] when a step failed and the old version runs again;
/// [`ApplyError::NeedsOperator`] when the rollback did not complete;
/// [`ApplyError::Busy`] or [`ApplyError::Interrupted`] when it cannot begin.
///
/// With `gate`, the apply waits for the word `go` on it before the service
/// stops ([`Transaction::with_gate`]; `apply --wait-for-go`).
pub fn apply(
    site: &Site,
    bundle: &Path,
    opts: VerifyOptions,
    reporter: &Reporter,
    interrupt: &Interrupt,
    gate: Option<Box<dyn std::io::BufRead>>,
) -> Result<Applied, ApplyError> {
    let _lock = lock(site)?;
    reporter.event(
        "lock",
        Status::Ok,
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
    crate::site::check_trust_current(&state, &site.path, &site.trust_version)?;
    state.observe_time(crate::state::now(), "the clock")?;

    // Authenticate and check the header first (no payload read), so the
    // disk-space check knows the sizes before anything is written.
    reporter.event("verify", Status::Start, &bundle.display().to_string());
    // The installed version itself is no refusal here: it is nothing to do.
    let header_opts = VerifyOptions {
        reinstall: true,
        ..opts
    };
    let header = read_and_verify(site, Some(&state), bundle, header_opts, None)
        .map_err(ApplyError::from)
        .inspect_err(|e| audit_early_failure(&state, bundle, e))?;
    crate::verify::record(&state, bundle, &header)?;
    // A trust update the bundle carries was checked against this site's
    // trust and vouched for the bundle's signatures: it is in force from
    // now, whatever the apply does next, as after `trust install`.
    if let Some(carried) = &header.carried_trust {
        let line = crate::commands::trust::install_carried(&state, bundle, carried)?;
        reporter.event("trust", Status::Ok, &line);
    }
    let m = header.header.manifest.clone();
    if m.version == header.installed.version && !opts.reinstall && !opts.allow_downgrade {
        reporter.event(
            "verify",
            Status::Ok,
            &format!(
                "{} {} is already installed, nothing to do (signed by {}); pass --reinstall to install it again",
                m.name,
                m.version,
                header.signers_text()
            ),
        );
        let _ = state.audit(&AuditEntry {
            action: AuditAction::Apply,
            bundle: Some(bundle.display().to_string()),
            version: Some(m.version.to_string()),
            signers: Some(header.signers_text()),
            error: Some("already installed, nothing to do".into()),
            ..AuditEntry::default()
        });
        return Ok(Applied::AlreadyInstalled {
            name: m.name,
            version: m.version,
        });
    }
    reporter.event(
        "verify",
        Status::Ok,
        &format!(
            "{} {} -> {}, signed by {}",
            m.name,
            header.installed.version,
            m.version,
            header.signers_text()
        ),
    );
    let steps = planned_steps(site, &m)
        .map_err(|cause| ApplyError::Preflight {
            step: "planning".into(),
            cause: Box::new(cause),
        })
        .inspect_err(|e| audit_early_failure(&state, bundle, e))?;
    check_space(site, &m, reporter).inspect_err(|e| audit_early_failure(&state, bundle, e))?;

    let manifest_json = String::from_utf8_lossy(&header.header.manifest_bytes).into_owned();
    let from = header.installed.version.to_string();
    let backup_dir = |id: i64| {
        site.profile.paths.backup_dir.join(format!(
            "{:010}-{id}-{from}-to-{}",
            crate::state::now(),
            m.version
        ))
    };
    // The id is known once the row exists; the folder name carries it.
    let id = state.begin_apply(&NewApply {
        kind: ApplyKind::Apply,
        rollback_of: None,
        bundle: &bundle.display().to_string(),
        name: &m.name,
        from: &from,
        to: &m.version.to_string(),
        manifest_json: &manifest_json,
        signers: &header.signers_text(),
    })?;
    reporter.open_log(&site.log_path(id));
    state.set_backup_dir(id, &backup_dir(id))?;
    let record = state.require_apply(id)?;
    let txn = Transaction::new(site, state, reporter, interrupt, AuditAction::Apply, record)
        .map_err(|failed| unreadable(&failed))?
        .with_source(Source {
            bundle: bundle.to_owned(),
            opts,
        });
    let txn = match gate {
        Some(gate) => txn.with_gate(gate),
        None => txn,
    };
    txn.run(&steps).map(Applied::Installed)
}
