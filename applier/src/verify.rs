//! Is this bundle acceptable on this node? The check before an apply (header
//! only), the stage step (every payload byte) and `airlock-apply verify`. Signatures and threshold against the site's keys,
//! expiry, platform, applier version, `upgrades_from` against the installed
//! version, no downgrade unless asked, and every database and binary the
//! bundle names known to the site. Then the whole payload is read and checked.
//! Nothing on the node changes here.

use std::path::{Path, PathBuf};

use airlock_formats::time::{rfc3339, rfc3339_signed as at};
use airlock_formats::{
    BundleError, BundleHeader, BundleSource, KeyId, Manifest, MigrationTool, PayloadSink, Role,
    Sha256Digest, Trust, TrustError, TrustUpdate,
};
use semver::Version;

use crate::error::{StepError, VerifyError};
use crate::site::{Site, TrustInForce};
use crate::state::{HighestTime, State};
use crate::steps::migrate;
use crate::steps::service::{find_version, run_probe};

/// Options of verification.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// Accept a version lower than or equal to the installed one, and an
    /// installed version outside `upgrades_from`.
    pub allow_downgrade: bool,
    /// Accept the installed version itself (install it again).
    pub reinstall: bool,
    /// Accept a bundle past its `expires_at` (recorded in the audit log).
    pub allow_expired: bool,
    /// Accept a bundle created more than the allowed skew ahead of this
    /// node's time, and move the node's time forward to its `created_at`
    /// (recorded in the audit log).
    pub trust_bundle_time: bool,
}

/// Where the installed version came from.
#[derive(Debug, Clone)]
pub struct InstalledVersion {
    /// The version.
    pub version: Version,
    /// `state database` or `version probe`.
    pub source: &'static str,
    /// The installed release's bundle name, when airlock installed it.
    pub name: Option<String>,
}

/// A bundle that passed verification, header and payload.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The bundle file.
    pub bundle: PathBuf,
    /// Manifest and signatures.
    pub header: BundleHeader,
    /// Trusted keys whose signatures counted.
    pub signers: Vec<KeyId>,
    /// What runs now.
    pub installed: InstalledVersion,
    /// SHA-256 of the whole bundle file.
    pub bundle_sha256: Sha256Digest,
    /// The rules an option let it break.
    pub overrides: Vec<Override>,
    /// How many signatures the trust it was checked against needs.
    pub threshold: usize,
    /// The trust update the bundle carries, when it raises this site's
    /// trust version and passed [`TrustUpdate::check`]: its signatures were
    /// checked against it. `apply` installs it.
    pub carried_trust: Option<CarriedTrust>,
}

/// A trust update a bundle carries that this site accepts (docs/SITE.md,
/// "Trust updates").
#[derive(Debug, Clone)]
pub struct CarriedTrust {
    /// The update file's bytes.
    pub bytes: Vec<u8>,
    /// Its document and who signed it.
    pub accepted: airlock_formats::trust::Accepted,
    /// The trust version it was checked against.
    pub previous: u64,
}

/// Refuses a trust update that has expired by this node's time, or was made
/// more than the skew ahead of it (its `created_at` would otherwise move
/// the node's time forward without bound).
///
/// # Errors
/// Why, in words.
pub fn check_update_times(
    document: &airlock_formats::TrustDocument,
    clock: &Clock,
) -> Result<(), String> {
    let time = clock.time();
    if i64::try_from(document.created_at).unwrap_or(i64::MAX) > time.saturating_add(clock.skew_secs)
    {
        return Err(format!(
            "trust version {} was created at {}, more than {} s ahead: {}",
            document.version,
            rfc3339(document.created_at),
            clock.skew_secs,
            clock.describe()
        ));
    }
    match document.expires_at {
        Some(expires) if time > i64::try_from(expires).unwrap_or(i64::MAX) => Err(format!(
            "trust version {} expired at {}; {}",
            document.version,
            rfc3339(expires),
            clock.describe()
        )),
        _ => Ok(()),
    }
}

/// The trust a bundle is checked against: the site's trust in force, or the
/// trust update the bundle carries when this site accepts it (a higher
/// version, signed by both thresholds, not expired).
///
/// # Errors
/// The [`Refusal`] of a carried update that raises the version but is not
/// acceptable or has expired.
pub fn effective_trust(
    trust: &Trust,
    trust_version: &TrustInForce,
    header: &BundleHeader,
    clock: &Clock,
) -> Result<(Trust, TrustInForce, Option<CarriedTrust>), Refusal> {
    let current = || (trust.clone(), trust_version.clone(), None);
    let Some(bytes) = &header.trust_update else {
        return Ok(current());
    };
    let refuse = |reason: String| {
        Refusal::new(
            format!("it carries a trust update that this site does not accept: {reason}"),
            "the bundle's trust update needs the signatures of the keys this site trusts and of its own keys (`airlock-apply trust show` lists this site's); ask the release engineer for a bundle with a complete update, or install one with `airlock-apply trust install`",
        )
    };
    let (update, _) = TrustUpdate::from_json(bytes).map_err(|e| refuse(e.to_string()))?;
    let accepted = match update.check(trust, trust_version.version) {
        Ok(accepted) => accepted,
        // Installed already, or older than what is in force: nothing to carry.
        Err(TrustError::NotNewer { .. }) => return Ok(current()),
        Err(e) => return Err(refuse(e.to_string())),
    };
    check_update_times(&accepted.document, clock).map_err(refuse)?;
    let trust = accepted.trust.clone();
    let version = TrustInForce {
        version: accepted.document.version,
        update_sha256: Some(Sha256Digest::of(bytes).to_hex()),
        accepted_at: None,
        expires_at: accepted.document.expires_at,
    };
    Ok((
        trust,
        version,
        Some(CarriedTrust {
            bytes: bytes.clone(),
            accepted,
            previous: trust_version.version,
        }),
    ))
}

impl Verified {
    /// Signer key ids, comma-separated.
    pub fn signers_text(&self) -> String {
        self.signers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The installed version: the state database's record, else the version probe.
///
/// # Errors
/// [`VerifyError::Installed`] when neither can tell.
pub fn installed_version(
    site: &Site,
    state: Option<&State>,
) -> Result<InstalledVersion, VerifyError> {
    if let Some(installed) = state.map(State::installed).transpose()?.flatten() {
        return Ok(InstalledVersion {
            version: installed.version,
            source: "state database",
            name: Some(installed.name),
        });
    }
    let preflight = VerifyError::Installed;
    let probe = site.profile.service.version.as_ref().ok_or_else(|| {
        preflight("airlock has not installed a release here and site.toml has no [service.version] probe; add one".into())
    })?;
    let result = run_probe(probe, &site.dir, &[]);
    if !result.ok {
        return Err(preflight(format!(
            "the version probe failed: {}",
            result.output
        )));
    }
    let version = find_version(&result.output).ok_or_else(|| {
        preflight(format!(
            "the version probe printed no SemVer version: `{}`",
            result.output.trim()
        ))
    })?;
    Ok(InstalledVersion {
        version,
        source: "version probe",
        name: None,
    })
}

/// This node's time (docs/SITE.md, "Time and expiry"): its clock, and the
/// highest time it recorded, which setting the clock back does not lower.
#[derive(Debug, Clone)]
pub struct Clock {
    /// The system clock, Unix seconds.
    pub now: i64,
    /// The highest time recorded in the state database.
    pub highest: Option<HighestTime>,
    /// How far ahead of [`Clock::time`] a bundle's `created_at` may be, in seconds.
    pub skew_secs: i64,
}

impl Clock {
    /// Reads the clock and the recorded time of `state`, with `skew_secs`
    /// from the site's `[trust] clock_skew_secs`.
    ///
    /// # Errors
    /// [`VerifyError::State`] when the state database cannot be read.
    pub fn read(state: Option<&State>, skew_secs: u64) -> Result<Self, VerifyError> {
        Ok(Self {
            now: crate::state::now(),
            highest: state.map(State::highest_time).transpose()?.flatten(),
            skew_secs: i64::try_from(skew_secs).unwrap_or(i64::MAX),
        })
    }

    /// The node's time: the later of the clock and the recorded time.
    pub fn time(&self) -> i64 {
        self.highest
            .as_ref()
            .map_or(self.now, |h| h.at.max(self.now))
    }

    /// The node's time in words, for messages: the clock's reading, and the
    /// recorded time when it is later.
    pub fn describe(&self) -> String {
        match &self.highest {
            Some(h) if h.at > self.now => format!(
                "this node's time is {} (recorded from {}); its clock says {}, earlier, and airlock never lets time go back",
                at(h.at),
                h.source,
                at(self.now)
            ),
            _ => format!("the clock here says {}", at(self.now)),
        }
    }
}

/// A rule a bundle broke and an option allowed; each is recorded in the
/// audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Override {
    /// `--allow-expired`: the bundle expired at `expires_at`.
    Expired {
        /// Unix seconds.
        expires_at: u64,
        /// The node's time then.
        time: i64,
    },
    /// `--allow-expired`: the site's trust in force expired at `expires_at`.
    TrustExpired {
        /// The trust version.
        version: u64,
        /// Unix seconds.
        expires_at: u64,
        /// The node's time then.
        time: i64,
    },
    /// `--trust-bundle-time`: the bundle was created at `created_at`, more
    /// than the skew ahead of the node's time.
    BundleTime {
        /// Unix seconds.
        created_at: u64,
        /// The node's time then.
        time: i64,
    },
}

impl std::fmt::Display for Override {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Expired { expires_at, time } => write!(
                f,
                "--allow-expired: accepted although it expired at {}; this node's time was {}",
                rfc3339(*expires_at),
                at(*time)
            ),
            Self::TrustExpired {
                version,
                expires_at,
                time,
            } => write!(
                f,
                "--allow-expired: accepted although this site's trust version {version} expired at {}; this node's time was {}",
                rfc3339(*expires_at),
                at(*time)
            ),
            Self::BundleTime { created_at, time } => write!(
                f,
                "--trust-bundle-time: accepted its created_at {} although this node's time was {}; this node's time moves forward to it",
                rfc3339(*created_at),
                at(*time)
            ),
        }
    }
}

/// Why a bundle is refused, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: String,
    /// What to do next.
    pub help: String,
}

impl Refusal {
    fn new(reason: String, help: impl Into<String>) -> Self {
        Self {
            reason,
            help: help.into(),
        }
    }
}

/// Checks a bundle's times against this node's time (docs/SITE.md, "Time
/// and expiry"): refuses one past its `expires_at` unless
/// `opts.allow_expired`, and one created more than the skew ahead unless
/// `opts.trust_bundle_time`. Returns what an option allowed.
///
/// # Errors
/// The [`Refusal`], naming the times.
pub fn check_time(
    m: &Manifest,
    clock: &Clock,
    opts: VerifyOptions,
) -> Result<Vec<Override>, Refusal> {
    let time = clock.time();
    let mut overrides = Vec::new();
    let created = i64::try_from(m.created_at).unwrap_or(i64::MAX);
    if created > time.saturating_add(clock.skew_secs) {
        if !opts.trust_bundle_time {
            return Err(Refusal::new(
                format!(
                    "it was created at {}, more than {} s ahead: {}",
                    rfc3339(m.created_at),
                    clock.skew_secs,
                    clock.describe()
                ),
                "check this machine's clock (`date -u`); if it is wrong and the bundle's time is right, pass --trust-bundle-time, which accepts the bundle's time and moves this node's time forward to it (recorded in the audit log)",
            ));
        }
        overrides.push(Override::BundleTime {
            created_at: m.created_at,
            time,
        });
    }
    if let Some(expires) = m.expires_at {
        if time > i64::try_from(expires).unwrap_or(i64::MAX) {
            if !opts.allow_expired {
                return Err(Refusal::new(
                    format!(
                        "it expired at {}; {}",
                        rfc3339(expires),
                        clock.describe()
                    ),
                    "ask the release engineer for a fresh bundle; pass --allow-expired only if this old release must be applied anyway (recorded in the audit log)",
                ));
            }
            overrides.push(Override::Expired {
                expires_at: expires,
                time,
            });
        }
    }
    Ok(overrides)
}

/// Refuses every bundle while the site's trust in force has expired
/// (docs/SITE.md, "Trust updates"), unless `opts.allow_expired`.
///
/// # Errors
/// The [`Refusal`], naming the version and the times.
pub fn check_trust_expiry(
    trust_version: &TrustInForce,
    clock: &Clock,
    opts: VerifyOptions,
) -> Result<Option<Override>, Refusal> {
    let Some(expires_at) = trust_version.expires_at else {
        return Ok(None);
    };
    let time = clock.time();
    if time <= i64::try_from(expires_at).unwrap_or(i64::MAX) {
        return Ok(None);
    }
    if opts.allow_expired {
        return Ok(Some(Override::TrustExpired {
            version: trust_version.version,
            expires_at,
            time,
        }));
    }
    Err(Refusal::new(
        format!(
            "this site's {} expired at {}; {}",
            trust_version.describe(),
            rfc3339(expires_at),
            clock.describe()
        ),
        "install a newer trust update from your release engineer with `airlock-apply trust install FILE`; pass --allow-expired only to apply this bundle anyway (recorded in the audit log)",
    ))
}

/// Records what a successful verification showed (docs/SITE.md, "Time and
/// expiry"): the bundle's `created_at` moves this node's time forward, and
/// every [`Override`] gets an audit entry. The clock itself is recorded by
/// the commands, whatever the verdict.
///
/// # Errors
/// [`StateError`](crate::state::StateError) when the state database cannot be written.
pub fn record(state: &State, bundle: &Path, v: &Verified) -> Result<(), crate::state::StateError> {
    let m = &v.header.manifest;
    state.observe_time(
        i64::try_from(m.created_at).unwrap_or(i64::MAX),
        &format!("the created_at of bundle {} {}", m.name, m.version),
    )?;
    for o in &v.overrides {
        state.audit(&crate::state::AuditEntry {
            action: crate::state::AuditAction::Override,
            bundle: Some(bundle.display().to_string()),
            version: Some(m.version.to_string()),
            bundle_sha256: Some(v.bundle_sha256.to_hex()),
            signers: Some(v.signers_text()),
            error: Some(o.to_string()),
            ..crate::state::AuditEntry::default()
        })?;
    }
    Ok(())
}

/// Refuses a bundle of another product than the one this node runs: the
/// site profile's `product`, else the installed release's name (RAUC's
/// `compatible`, Mender's `device_type` play this part).
fn check_product(site: &Site, m: &Manifest, installed: &InstalledVersion) -> Result<(), Refusal> {
    let (product, from) = match (&site.profile.product, &installed.name) {
        (Some(product), _) => (
            product,
            format!("its site profile says product = \"{product}\""),
        ),
        (None, Some(name)) => (name, format!("it runs {name} {}", installed.version)),
        (None, None) => return Ok(()),
    };
    if &m.name == product {
        return Ok(());
    }
    Err(Refusal::new(
        format!(
            "it is a bundle of `{}`, but this node runs `{product}` ({from})",
            m.name
        ),
        format!(
            "use the `{product}` bundle for this node; if this node really changes product, set `product = \"{}\"` in {}",
            m.name,
            site.path.display()
        ),
    ))
}

/// Checks the manifest against the site.
fn check_manifest(
    site: &Site,
    m: &Manifest,
    installed: &InstalledVersion,
    clock: &Clock,
    opts: VerifyOptions,
) -> Result<Vec<Override>, Refusal> {
    check_product(site, m, installed)?;
    let installed = &installed.version;
    let overrides = check_time(m, clock, opts)?;
    if m.platform != site.platform() {
        return Err(Refusal::new(
            format!(
                "it is built for {}, this site is {}",
                m.platform,
                site.platform()
            ),
            "use the bundle built for this platform",
        ));
    }
    let own = Version::parse(airlock_formats::VERSION).unwrap_or_else(|_| Version::new(0, 0, 0));
    if m.min_applier_version > own {
        return Err(Refusal::new(
            format!(
                "it needs airlock-apply {} or newer, this is {own}",
                m.min_applier_version
            ),
            "bring a newer airlock-apply to the site first",
        ));
    }
    if m.version == *installed && !opts.allow_downgrade && !opts.reinstall {
        return Err(Refusal::new(
            format!("{} {} is already installed", m.name, installed),
            "nothing to do: `airlock-apply apply` says so and exits 0; pass --reinstall to install it again",
        ));
    }
    if m.version < *installed && !opts.allow_downgrade {
        return Err(Refusal::new(
            format!(
                "{} is older than the installed {installed} (a downgrade)",
                m.version
            ),
            "pass --allow-downgrade if a downgrade is really intended",
        ));
    }
    if m.version != *installed && !m.upgrades_from.matches(installed) && !opts.allow_downgrade {
        return Err(Refusal::new(
            format!(
                "it upgrades installed versions `{}`, but {installed} is installed",
                m.upgrades_from
            ),
            "apply the intermediate release first, or ask for a bundle that upgrades this version",
        ));
    }
    for database in m.migrated_databases() {
        let Some(path) = site.profile.data.databases.get(database) else {
            return Err(Refusal::new(
                format!("it migrates database `{database}`, which site.toml does not list"),
                format!(
                    "add `{database}` under [data.databases] in {}",
                    site.path.display()
                ),
            ));
        };
        migrate::pending(path, database, m).map_err(|e| {
            let help = match &e {
                StepError::MigrationDirty { tool: MigrationTool::Sqlx, .. } =>
                    "repair the database by hand as sqlx asks (fix what the migration left, then delete its row with success = false from _sqlx_migrations), then apply again",
                StepError::MigrationDirty { .. } =>
                    "repair the database by hand as golang-migrate asks (fix what the migration left, then `migrate force VERSION`), then apply again",
                StepError::MigrationMissing { .. } =>
                    "the database is ahead of this bundle or comes from another history: apply the bundle that carries every migration the database has",
                StepError::MigrationChanged { .. } =>
                    "a migration that already ran was changed; the release engineer must ship a new migration instead",
                StepError::Inconsistent { .. } =>
                    "the bundle's migrations break their tool's rules: ask for a bundle built with airlock-build 0.2 or newer",
                _ => "check that the database file exists, is a SQLite database this user may read, and is not locked by another process",
            };
            Refusal::new(e.to_string(), help)
        })?;
    }
    for f in m.files.iter().filter(|f| f.role == Role::Binary) {
        let name = f.name.as_deref().unwrap_or_default();
        if !site.profile.binaries.contains_key(name) && f.install_path.is_none() {
            return Err(Refusal::new(
                format!("binary `{name}` has no install path"),
                format!(
                    "add `{name} = \"/path\"` under [binaries] in {}",
                    site.path.display()
                ),
            ));
        }
    }
    let targets: Vec<(String, std::path::PathBuf)> = m
        .files
        .iter()
        .filter_map(|f| {
            crate::steps::install::install_target(site, f).map(|t| (f.path.to_string(), t))
        })
        .collect();
    check_install_roots(site, m, &targets)?;
    // A tree replaces its folder as a whole: nothing else may be installed
    // inside it, and it must be a folder (docs/SITE.md, "Trees").
    for tree in &m.trees {
        let folder = crate::transaction::step::tree_target(site, tree);
        let clash = targets
            .iter()
            .map(|(what, t)| (format!("`{what}`"), t.clone()))
            .chain(m.trees.iter().filter(|t| t.name != tree.name).map(|t| {
                (
                    format!("tree `{}`", t.name),
                    crate::transaction::step::tree_target(site, t),
                )
            }))
            .find(|(_, t)| t.starts_with(&folder) || (folder.starts_with(t) && t != &folder));
        if let Some((what, t)) = clash {
            return Err(Refusal::new(
                format!(
                    "tree `{}` replaces `{}` as a whole, and {what} would be installed at `{}`",
                    tree.name,
                    folder.display(),
                    t.display()
                ),
                format!(
                    "install them in separate folders: change [trees], [files] or [binaries] in {}",
                    site.path.display()
                ),
            ));
        }
        if fs_err::symlink_metadata(&folder).is_ok_and(|meta| !meta.is_dir()) {
            return Err(Refusal::new(
                format!(
                    "tree `{}` would replace `{}`, which is not a folder",
                    tree.name,
                    folder.display()
                ),
                format!(
                    "move it away, or install the tree elsewhere under [trees] in {}",
                    site.path.display()
                ),
            ));
        }
    }
    Ok(overrides)
}

/// `path` with its nearest existing ancestor resolved (symbolic links
/// followed, as the kernel will when the file is written) and the rest
/// appended; `None` when the rest holds a `..`, which cannot be resolved
/// before it exists.
fn resolved(path: &Path) -> Option<PathBuf> {
    let mut rest = Vec::new();
    let mut probe = path;
    loop {
        if let Ok(real) = fs_err::canonicalize(probe) {
            let mut out = real;
            for part in rest.iter().rev() {
                match part {
                    std::path::Component::Normal(name) => out.push(name),
                    std::path::Component::CurDir => {}
                    _ => return None,
                }
            }
            return Some(out);
        }
        rest.push(probe.components().next_back()?);
        probe = probe.parent()?;
    }
}

/// Refuses a bundle that would install a file or tree outside the site's
/// install roots (docs/SITE.md, "Install roots"): a trusted signature alone
/// never lets a bundle write where the site did not say.
fn check_install_roots(
    site: &Site,
    m: &Manifest,
    files: &[(String, PathBuf)],
) -> Result<(), Refusal> {
    let (roots, from) = site.install_roots();
    let real_roots: Vec<PathBuf> = roots.iter().filter_map(|r| resolved(r)).collect();
    let trees = m.trees.iter().map(|t| {
        (
            format!("tree `{}`", t.name),
            crate::transaction::step::tree_target(site, t),
        )
    });
    let files = files
        .iter()
        .map(|(what, t)| (format!("`{what}`"), t.clone()));
    // What the profile maps is the site's own word; anything else must lie
    // strictly below a root, so a bundle never replaces a root itself.
    let mapped: Vec<&PathBuf> = site.mapped_paths().collect();
    for (what, target) in files.chain(trees) {
        let inside = mapped.contains(&&target)
            || resolved(&target).is_some_and(|real| {
                real_roots
                    .iter()
                    .any(|root| real.starts_with(root) && &real != root)
            });
        if inside {
            continue;
        }
        let shown_roots = if roots.is_empty() {
            "none".to_string()
        } else {
            roots
                .iter()
                .map(|r| format!("`{}`", r.display()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(Refusal::new(
            format!(
                "{what} would be installed at `{}`, not below the site's install roots ({shown_roots}; {})",
                target.display(),
                from.describe()
            ),
            format!(
                "if this node really should get that file, map it under [binaries], [files] or [trees], or add its folder to install_roots, in {}; otherwise the bundle is not meant for this site",
                site.path.display()
            ),
        ));
    }
    Ok(())
}

/// Reads the bundle at `bundle` once: authenticates and checks the header
/// before any payload byte is read, then streams every payload file into `sink`.
///
/// # Errors
/// [`VerifyError::Refused`] when the bundle is not acceptable or damaged;
/// [`VerifyError::Unreadable`] when it cannot be read (or `sink` cannot
/// write); [`VerifyError::Installed`] when the installed version is unknown.
pub fn read_and_verify(
    site: &Site,
    state: Option<&State>,
    bundle: &Path,
    opts: VerifyOptions,
    sink: Option<&mut dyn PayloadSink>,
) -> Result<Verified, VerifyError> {
    let installed = installed_version(site, state)?;
    let clock = Clock::read(state, site.profile.trust.clock_skew_secs)?;
    let mut overrides = Vec::new();
    let mut carried_trust = None;
    let mut threshold = site.trust.threshold();
    let unreadable = |source: BundleError| VerifyError::Unreadable {
        bundle: bundle.to_owned(),
        source,
    };
    let refused = |reason: String, help: String| VerifyError::Refused {
        bundle: bundle.to_owned(),
        reason,
        help,
    };
    let volumes_help = || {
        "check the volumes with `airlock-apply check-media`; repair them from parity with `airlock-apply repair`, or copy them again (docs/OPERATIONS.md, \"Carrying a bundle across\")".to_string()
    };
    let mut signers = Vec::new();
    let mut refusal_help = None;
    // One file, or a volume set read in place (docs/FORMAT.md, "Volumes").
    let result = BundleSource::open(bundle).and_then(|source| {
        source.read_hashed(
            |h| {
                let mut refused = |refusal: Refusal| {
                    refusal_help = Some(refusal.help);
                    BundleError::Refused(refusal.reason)
                };
                let (trust, trust_version, carried) =
                    effective_trust(&site.trust, &site.trust_version, h, &clock)
                        .map_err(&mut refused)?;
                if let Some(o) = check_trust_expiry(&trust_version, &clock, opts).map_err(&mut refused)? {
                    overrides.push(o);
                }
                signers = trust.check(&h.manifest_bytes, &h.signatures).map_err(|e| {
                    refused(Refusal::new(e.to_string(), format!(
                        "the site needs {} signature(s) by the keys of its {} (`airlock-apply trust show` lists them); ask another release key holder to run `airlock-build sign`, or check that the bundle came from your release engineer",
                        trust.threshold(),
                        trust_version.describe()
                    )))
                })?;
                carried_trust = carried;
                threshold = trust.threshold();
                overrides.extend(
                    check_manifest(site, &h.manifest, &installed, &clock, opts).map_err(
                        |refusal| {
                            refusal_help = Some(refusal.help);
                            BundleError::Refused(refusal.reason)
                        },
                    )?,
                );
                Ok(())
            },
            sink,
        )
    });
    let (header, bundle_sha256) = result.map_err(|e| match e {
        e @ BundleError::Io { .. } => unreadable(e),
        BundleError::Volumes(reason) => refused(reason, volumes_help()),
        e @ BundleError::Incomplete { .. } => refused(
            e.to_string(),
            "the copy did not finish: copy the bundle again, then compare its SHA-256 with the one `airlock-build build` printed".into(),
        ),
        other => refused(
            other.to_string(),
            refusal_help.take().unwrap_or_else(|| {
                "the file is damaged or was altered: copy it again from the release medium and check it with `airlock-apply verify`".into()
            }),
        ),
    })?;
    Ok(Verified {
        bundle: bundle.to_owned(),
        header,
        signers,
        installed,
        bundle_sha256,
        overrides,
        threshold,
        carried_trust,
    })
}
