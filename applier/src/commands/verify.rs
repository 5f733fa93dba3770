//! `airlock-apply verify` (docs/OPERATIONS.md, "Verify the bundle"): the
//! whole bundle checked against this site, every payload byte read,
//! nothing changed on the node; the check is recorded in the audit log when
//! a state database exists.

use std::path::Path;

use airlock_formats::DiscardSink;

use crate::error::{ApplyError, VerifyError};
use crate::site::Site;
use crate::state::{ApplyOutcome, AuditAction, AuditEntry, State};
use crate::verify::{read_and_verify, Verified, VerifyOptions};

/// Verifies `bundle` for `site` and audits the result.
///
/// # Errors
/// [`ApplyError::Refused`] when the bundle is refused; other variants when
/// it or the site cannot be read.
pub fn verify(site: &Site, bundle: &Path, opts: VerifyOptions) -> Result<Verified, ApplyError> {
    let state = State::open_existing(&site.profile.paths.state_dir)?;
    let result = read_and_verify(site, state.as_ref(), bundle, opts, Some(&mut DiscardSink));
    if let Some(state) = &state {
        // This node's clock moves its time forward whatever the verdict.
        let _ = state.observe_time(crate::state::now(), "the clock");
        let mut entry = AuditEntry {
            action: AuditAction::Verify,
            bundle: Some(bundle.display().to_string()),
            ..AuditEntry::default()
        };
        match &result {
            Ok(v) => {
                // Time seen and options used are kept even if the entry below cannot be.
                let _ = crate::verify::record(state, bundle, v);
                entry.version = Some(v.header.manifest.version.to_string());
                entry.bundle_sha256 = Some(v.bundle_sha256.to_hex());
                entry.signers = Some(v.signers_text());
            }
            Err(e) => {
                entry.outcome = if matches!(e, VerifyError::Refused { .. }) {
                    ApplyOutcome::Refused
                } else {
                    ApplyOutcome::Failed
                };
                entry.error = Some(e.to_string());
            }
        }
        // The check itself succeeded or failed; a failed audit write does not change that.
        let _ = state.audit(&entry);
    }
    Ok(result?)
}

/// What `verify --json` prints on success.
pub fn report(v: &Verified) -> crate::protocol::VerifiedReport {
    let m = &v.header.manifest;
    crate::protocol::VerifiedReport {
        protocol: crate::protocol::PROTOCOL,
        bundle: v.bundle.display().to_string(),
        name: m.name.clone(),
        version: m.version.to_string(),
        installed: v.installed.version.to_string(),
        installed_source: v.installed.source.into(),
        signers: v.signers.iter().map(ToString::to_string).collect(),
        threshold: v.threshold,
        sha256: v.bundle_sha256.to_hex(),
        files: m.files.len(),
        unpacked_size: m.payload.unpacked_size,
        created_at: m.created_at,
        created_at_rfc3339: airlock_formats::time::rfc3339(m.created_at),
        expires_at: m.expires_at,
        expires_at_rfc3339: m.expires_at.map(airlock_formats::time::rfc3339),
        overrides: v.overrides.iter().map(ToString::to_string).collect(),
        carries_trust_version: v
            .carried_trust
            .as_ref()
            .map(|c| c.accepted.document.version),
    }
}

/// The line `verify` reports on success.
pub fn summary(v: &Verified) -> String {
    let m = &v.header.manifest;
    format!(
        "{} {} may be applied here: installed {} ({}), signed by {} (threshold {}), {} files, sha256 {}",
        m.name,
        m.version,
        v.installed.version,
        v.installed.source,
        v.signers_text(),
        v.threshold,
        m.files.len(),
        v.bundle_sha256
    )
}
