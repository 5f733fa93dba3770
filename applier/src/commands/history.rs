//! `airlock-apply history` (docs/OPERATIONS.md, "Backups and the audit
//! log"): the audit log, oldest first, and `--check` of its hash chain.

use crate::error::ApplyError;
use crate::site::Site;
use crate::state::{AuditRow, State};

/// The audit log, or `None` when the node has no state database yet.
///
/// # Errors
/// [`ApplyError::State`].
pub fn history(site: &Site) -> Result<Option<Vec<AuditRow>>, ApplyError> {
    let Some(state) = State::open_existing(&site.profile.paths.state_dir)? else {
        return Ok(None);
    };
    Ok(Some(state.history()?))
}

/// Checks the audit log's hash chain; returns how many entries it holds
/// (`None`: no state database yet).
///
/// # Errors
/// [`ApplyError::CheckFailed`] naming each entry that was changed or deleted.
pub fn check(site: &Site) -> Result<Option<usize>, ApplyError> {
    let Some(state) = State::open_existing(&site.profile.paths.state_dir)? else {
        return Ok(None);
    };
    match state.check_history()? {
        Ok(n) => Ok(Some(n)),
        Err(problems) => Err(ApplyError::CheckFailed(format!(
            "the audit log does not match its hash chain: {}",
            problems.join("; ")
        ))),
    }
}

/// The audit log as text: one entry a line, its error on the next.
pub fn render(rows: &[AuditRow]) -> String {
    let mut out = String::new();
    for r in rows {
        out.push_str(&format!(
            "#{:<4} {} {:<10} {:<8} {:<14} {} {} sha256 {} signers {}\n",
            r.id,
            airlock_formats::time::rfc3339_signed(r.at),
            r.user,
            r.action,
            r.outcome,
            r.bundle.as_deref().unwrap_or("-"),
            r.version.as_deref().unwrap_or("-"),
            r.bundle_sha256
                .as_deref()
                .filter(|s| !s.is_empty())
                .map_or_else(|| "-".to_string(), |s| s.chars().take(16).collect()),
            r.signers
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or("-"),
        ));
        if let Some(e) = &r.error {
            out.push_str(&format!("       {e}\n"));
        }
    }
    out
}
