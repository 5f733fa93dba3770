//! `airlock-apply status` (docs/OPERATIONS.md, "Check the status"): the
//! installed version and where it was read, an interrupted apply, the last
//! applies and every backup folder.

use std::path::Path;

use airlock_formats::time::rfc3339_signed;

use crate::error::ApplyError;
use crate::protocol::{
    ApplySummary, BackupSummary, InstalledReport, RunningApply, StatusReport, PROTOCOL,
};
use crate::site::Site;
use crate::state::State;
use crate::steps::backup::{self, BackupInfo};
use crate::verify::installed_version;

/// A backup folder as `status` and `backups list` show it (not re-hashed).
pub fn backup_summary(b: &BackupInfo) -> BackupSummary {
    BackupSummary {
        dir: b.dir.display().to_string(),
        complete: b.manifest.is_some(),
        from: b.manifest.as_ref().map(|m| m.from_version.clone()),
        to: b.manifest.as_ref().map(|m| m.to_version.clone()),
        created_at: b.manifest.as_ref().map(|m| m.created_at),
        created_at_rfc3339: b.manifest.as_ref().map(|m| rfc3339_signed(m.created_at)),
        size: b.size,
        intact: None,
        problems: Vec::new(),
    }
}

/// Builds the status report of `site`; `trust_error` says why its trusted
/// keys could not be read ([`Site::load_for_reading`]). Changes nothing.
///
/// # Errors
/// [`ApplyError::State`] when the state database cannot be read.
pub fn status(site: &Site, trust_error: Option<String>) -> Result<StatusReport, ApplyError> {
    let state = State::open_existing(&site.profile.paths.state_dir)?;
    let installed = installed_version(site, state.as_ref());
    let (applies, unfinished) = match &state {
        Some(s) => (s.recent_applies(5)?, s.interrupted()?.map(|a| a.id)),
        None => (Vec::new(), None),
    };
    // An unfinished apply whose process still holds the lock is running,
    // not interrupted.
    let running = crate::lock::holder(site)?.map(|pid| RunningApply {
        id: unfinished,
        pid,
    });
    let interrupted = if running.is_some() { None } else { unfinished };
    Ok(StatusReport {
        protocol: PROTOCOL,
        installed_error: installed.as_ref().err().map(ToString::to_string),
        installed: installed.ok().map(|i| InstalledReport {
            version: i.version.to_string(),
            source: i.source.into(),
        }),
        interrupted_apply: interrupted,
        running_apply: running,
        trust_error,
        applies: applies
            .into_iter()
            .map(|a| ApplySummary {
                id: a.id,
                kind: a.kind,
                bundle: a.bundle,
                from: a.from_version,
                to: a.to_version,
                started_at: a.started_at,
                started_at_rfc3339: rfc3339_signed(a.started_at),
                finished_at: a.finished_at,
                finished_at_rfc3339: a.finished_at.map(rfc3339_signed),
                outcome: a.outcome,
                backup_dir: a.backup_dir,
                error: a.error,
            })
            .collect(),
        backups: backup::list(&site.profile.paths.backup_dir)
            .map_err(|cause| ApplyError::Preflight {
                step: "reading the backups".into(),
                cause: Box::new(cause),
            })?
            .iter()
            .map(backup_summary)
            .collect(),
    })
}

impl StatusReport {
    /// The report as text for a person; `site` is the profile's path, for the resume hint.
    pub fn render(&self, site: &Path, backup_dir: &Path) -> String {
        let mut out = String::new();
        match (&self.installed, &self.installed_error) {
            (Some(i), _) => out.push_str(&format!(
                "installed   {} (from the {})\n",
                i.version, i.source
            )),
            (None, e) => out.push_str(&format!(
                "installed   unknown: {}\n",
                e.as_deref().unwrap_or("no record")
            )),
        }
        if let Some(running) = &self.running_apply {
            let what = running
                .id
                .map_or_else(|| "an apply".to_string(), |id| format!("apply #{id}"));
            out.push_str(&format!(
                "RUNNING {what} (pid {}): it holds the lock; wait for it to end, its log is under `STATE_DIR/logs/`\n",
                running.pid
            ));
        }
        if let Some(id) = self.interrupted_apply {
            out.push_str(&format!(
                "INTERRUPTED apply #{id}: run `airlock-apply resume --site {}`\n",
                site.display()
            ));
        }
        if let Some(e) = &self.trust_error {
            out.push_str(&format!(
                "TRUST UNREADABLE: {e}\n  verify and apply refuse every bundle until it is fixed\n"
            ));
        }
        out.push_str("last applies:\n");
        if self.applies.is_empty() {
            out.push_str("  none\n");
        }
        for a in &self.applies {
            // The end, as `history` shows it; the start while it runs.
            let at = match (&a.finished_at_rfc3339, a.finished_at) {
                (Some(text), _) if !text.is_empty() => text.clone(),
                (_, Some(t)) => rfc3339_signed(t),
                _ => format!("started {}", rfc3339_signed(a.started_at)),
            };
            out.push_str(&format!(
                "  #{} {} -> {} {} at {at} ({})\n",
                a.id, a.from, a.to, a.outcome, a.bundle
            ));
            if let Some(e) = &a.error {
                out.push_str(&format!("      {e}\n"));
            }
        }
        out.push_str(&format!("backups in {}:\n", backup_dir.display()));
        if self.backups.is_empty() {
            out.push_str("  none\n");
        }
        for b in &self.backups {
            let what = match (&b.from, &b.to) {
                (Some(from), Some(to)) if b.complete => format!("{from} -> {to}"),
                _ => "incomplete".to_string(),
            };
            out.push_str(&format!(
                "  {}  {}  {}\n",
                b.dir,
                what,
                airlock_formats::shown::bytes(b.size)
            ));
        }
        out
    }
}
