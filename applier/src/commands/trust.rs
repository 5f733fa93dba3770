//! `airlock-apply trust install` and `trust show` (docs/OPERATIONS.md,
//! "Rotating release keys"): a signed trust update replaces the keys this
//! node trusts, with nothing edited by hand; every accepted version is kept.

use std::path::{Path, PathBuf};

use airlock_formats::time::rfc3339;
use airlock_formats::trust::Accepted;
use airlock_formats::{KeyId, Sha256Digest, TrustUpdate};
use serde::{Deserialize, Serialize};

use crate::cluster::profile::ClusterSite;
use crate::error::ApplyError;
use crate::lock::{lock_in, LOCK_FILE};
use crate::site::{is_cluster_profile, Site, TrustInForce};
use crate::state::{ApplyOutcome, AuditAction, AuditEntry, State, TrustRecord};
use crate::verify::Clock;

/// What a trust command needs of a site or cluster profile.
struct Holder {
    trust: airlock_formats::Trust,
    version: TrustInForce,
    state_dir: PathBuf,
    lock: &'static str,
    skew_secs: u64,
}

fn load(profile: &Path) -> Result<Holder, ApplyError> {
    if is_cluster_profile(profile)? {
        let c = ClusterSite::load(profile)?;
        return Ok(Holder {
            skew_secs: c.profile.trust.clock_skew_secs,
            trust: c.trust,
            version: c.trust_version,
            state_dir: c.profile.paths.state_dir,
            lock: "rollout.lock",
        });
    }
    let s = Site::load(profile)?;
    Ok(Holder {
        skew_secs: s.profile.trust.clock_skew_secs,
        trust: s.trust,
        version: s.trust_version,
        state_dir: s.profile.paths.state_dir,
        lock: LOCK_FILE,
    })
}

fn ids(keys: &[KeyId]) -> String {
    keys.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// An installed trust update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// [`crate::protocol::PROTOCOL`].
    pub protocol: u32,
    /// The version now in force.
    pub version: u64,
    /// The version it replaced.
    pub previous: u64,
    /// Key ids now trusted.
    pub keys: Vec<String>,
    /// Signatures a bundle needs.
    pub threshold: usize,
    /// Keys of the replaced trust that signed.
    pub current_signers: Vec<String>,
    /// Keys of the update that signed.
    pub new_signers: Vec<String>,
    /// SHA-256 of the update file.
    pub sha256: String,
}

/// Installs the trust update `file` for the site or cluster profile
/// `profile`: accepted only when its version is higher than the one in
/// force, the threshold of the trust in force and the threshold of its own
/// keys signed it, and it has not expired by this node's time. Every
/// attempt is recorded in the audit log.
///
/// # Errors
/// [`ApplyError::TrustRefused`] (exit 3) when it is not acceptable;
/// [`ApplyError::Busy`] while an apply runs; others when a file cannot be read.
pub fn install(profile: &Path, file: &Path) -> Result<Installed, ApplyError> {
    let holder = load(profile)?;
    let _lock = lock_in(&holder.state_dir, holder.lock)?;
    let state = State::open(&holder.state_dir)?;
    state.observe_time(crate::state::now(), "the clock")?;
    let result = accept(&holder, &state, file);
    // An accepted update was audited when it was kept.
    if let Err(e) = &result {
        state.audit(&AuditEntry {
            action: AuditAction::TrustInstall,
            bundle: Some(file.display().to_string()),
            outcome: if matches!(e, ApplyError::TrustRefused { .. }) {
                ApplyOutcome::Refused
            } else {
                ApplyOutcome::Failed
            },
            error: Some(e.to_string()),
            ..AuditEntry::default()
        })?;
    }
    result
}

fn accept(holder: &Holder, state: &State, file: &Path) -> Result<Installed, ApplyError> {
    let refused = |reason: String, help: &str| ApplyError::TrustRefused {
        file: file.to_owned(),
        reason,
        help: help.into(),
    };
    let bytes = fs_err::read(file).map_err(ApplyError::io("reading the trust update"))?;
    let (update, _) = TrustUpdate::from_json(&bytes).map_err(|e| {
        refused(
            e.to_string(),
            "this is not a trust update made by `airlock-build trust new`, or it was damaged: copy it again",
        )
    })?;
    let accepted = update.check(&holder.trust, holder.version.version).map_err(|e| {
        match e {
            airlock_formats::TrustError::NotNewer { .. } => refused(
                e.to_string(),
                "nothing to do if it is installed already (`airlock-apply trust show`); otherwise ask for an update with a higher version",
            ),
            _ => refused(
                format!("{e}; here {} is in force", holder.version.describe()),
                "a trust update needs the signatures of the keys trusted here (their threshold) and of its own keys (theirs): have the missing key holders run `airlock-build trust sign`",
            ),
        }
    })?;
    let clock = Clock::read(Some(state), holder.skew_secs)?;
    crate::verify::check_update_times(&accepted.document, &clock).map_err(|reason| {
        refused(
            reason,
            "check this machine's clock (`date -u`); if it is right, ask the release engineer for a fresh trust update",
        )
    })?;
    let sha256 = keep(
        state,
        &file.display().to_string(),
        &bytes,
        &accepted,
        holder.version.version,
    )?;
    let trust = &accepted.trust;
    Ok(Installed {
        protocol: crate::protocol::PROTOCOL,
        version: accepted.document.version,
        previous: holder.version.version,
        keys: trust
            .keys()
            .iter()
            .map(|k| k.key_id().to_string())
            .collect(),
        threshold: trust.threshold(),
        current_signers: accepted
            .current_signers
            .iter()
            .map(ToString::to_string)
            .collect(),
        new_signers: accepted
            .new_signers
            .iter()
            .map(ToString::to_string)
            .collect(),
        sha256,
    })
}

/// Keeps the accepted trust update `bytes`, read from `source`, in the
/// state database as the trust in force (checked against version
/// `previous`), moves this node's time to its `created_at`, and writes its
/// `trust-install` audit entry. Returns the file's SHA-256.
///
/// # Errors
/// [`ApplyError::State`] when it cannot be written (or another process
/// kept a version meanwhile).
fn keep(
    state: &State,
    source: &str,
    bytes: &[u8],
    accepted: &Accepted,
    previous: u64,
) -> Result<String, ApplyError> {
    let version = accepted.document.version;
    let sha256 = Sha256Digest::of(bytes).to_hex();
    let signers = format!(
        "current: {}; new: {}",
        ids(&accepted.current_signers),
        ids(&accepted.new_signers)
    );
    state.add_trust(
        version,
        previous,
        &String::from_utf8_lossy(bytes),
        &sha256,
        &signers,
    )?;
    state.observe_time(
        i64::try_from(accepted.document.created_at).unwrap_or(i64::MAX),
        &format!("the created_at of trust version {version}"),
    )?;
    state.audit(&AuditEntry {
        action: AuditAction::TrustInstall,
        bundle: Some(source.to_owned()),
        version: Some(format!("trust {version}")),
        bundle_sha256: Some(sha256.clone()),
        signers: Some(signers),
        ..AuditEntry::default()
    })?;
    Ok(sha256)
}

/// Installs the trust update the verified bundle `bundle` carries, as
/// `trust install` would, with its audit entry (docs/SITE.md, "Trust
/// updates"). Returns a line for the operator.
///
/// # Errors
/// [`ApplyError::State`] when it cannot be kept.
pub fn install_carried(
    state: &State,
    bundle: &Path,
    carried: &crate::verify::CarriedTrust,
) -> Result<String, ApplyError> {
    let accepted = &carried.accepted;
    keep(
        state,
        &format!("{} (carried)", bundle.display()),
        &carried.bytes,
        accepted,
        carried.previous,
    )?;
    Ok(format!(
        "trust version {} carried by the bundle installed: {} of {} must sign",
        accepted.document.version,
        accepted.document.threshold,
        ids(&accepted.new_signers)
    ))
}

/// The trust in force and every version accepted before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shown {
    /// [`crate::protocol::PROTOCOL`].
    pub protocol: u32,
    /// The version in force.
    pub version: u64,
    /// `site profile` or `trust update`.
    pub source: String,
    /// Key ids trusted.
    pub keys: Vec<String>,
    /// Signatures a bundle needs.
    pub threshold: usize,
    /// Expiry of the trust in force, Unix seconds.
    pub expires_at: Option<u64>,
    /// [`rfc3339`] of `expires_at`.
    pub expires_at_rfc3339: Option<String>,
    /// Every accepted update, oldest first (version 1, the profile, is not stored).
    pub history: Vec<TrustRecordShown>,
    /// This node's time, Unix seconds (docs/SITE.md, "Time and expiry").
    pub time: i64,
    /// [`rfc3339`] of `time`.
    pub time_rfc3339: String,
}

/// An accepted update, as `trust show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustRecordShown {
    /// Its version.
    pub version: u64,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Who signed.
    pub signers: String,
    /// When it was installed, Unix seconds.
    pub accepted_at: i64,
    /// [`rfc3339`] of `accepted_at`.
    pub accepted_at_rfc3339: String,
}

impl From<TrustRecord> for TrustRecordShown {
    fn from(r: TrustRecord) -> Self {
        Self {
            version: r.version,
            sha256: r.sha256,
            signers: r.signers,
            accepted_at_rfc3339: airlock_formats::time::rfc3339_signed(r.accepted_at),
            accepted_at: r.accepted_at,
        }
    }
}

/// The trust in force for `profile`; changes nothing.
///
/// # Errors
/// When the profile or the state database cannot be read.
pub fn show(profile: &Path) -> Result<Shown, ApplyError> {
    let holder = load(profile)?;
    let state = State::open_existing(&holder.state_dir)?;
    let history = match &state {
        Some(s) => s.trust_records()?.into_iter().map(Into::into).collect(),
        None => Vec::new(),
    };
    let clock = Clock::read(state.as_ref(), holder.skew_secs)?;
    Ok(Shown {
        protocol: crate::protocol::PROTOCOL,
        version: holder.version.version,
        source: if holder.version.update_sha256.is_some() {
            "trust update".into()
        } else {
            "site profile".into()
        },
        keys: holder
            .trust
            .keys()
            .iter()
            .map(|k| k.key_id().to_string())
            .collect(),
        threshold: holder.trust.threshold(),
        expires_at: holder.version.expires_at,
        expires_at_rfc3339: holder.version.expires_at.map(rfc3339),
        history,
        time: clock.time(),
        time_rfc3339: airlock_formats::time::rfc3339_signed(clock.time()),
    })
}

impl Shown {
    /// The text `trust show` prints.
    pub fn render(&self) -> String {
        let mut out = format!(
            "trust version {} ({}): {} of these keys must sign: {}\n",
            self.version,
            self.source,
            self.threshold,
            self.keys.join(", ")
        );
        let time = airlock_formats::time::rfc3339_signed(self.time);
        match self.expires_at {
            Some(e) => out.push_str(&format!(
                "expires at {}; this node's time is {time}\n",
                rfc3339(e)
            )),
            None => out.push_str(&format!("does not expire; this node's time is {time}\n")),
        }
        if self.history.is_empty() {
            out.push_str("no trust update installed: the site profile's [trust] is version 1\n");
        }
        for r in &self.history {
            out.push_str(&format!(
                "version {}: installed at {}, sha256 {}, signed by {}\n",
                r.version,
                airlock_formats::time::rfc3339_signed(r.accepted_at),
                r.sha256,
                r.signers
            ));
        }
        out
    }
}
