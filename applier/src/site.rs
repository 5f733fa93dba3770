//! The site profile, `site.toml` (docs/SITE.md): the service and how to
//! control it, its data, the keys the site trusts, and where the applier keeps
//! backups and state. Relative paths are relative to the profile's folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_formats::{PublicKey, Trust};
use serde::Deserialize;

use crate::error::ApplyError;

/// A loaded, resolved site profile.
#[derive(Debug, Clone)]
pub struct Site {
    /// The profile file.
    pub path: PathBuf,
    /// Its folder; commands run here.
    pub dir: PathBuf,
    /// Parsed contents, with paths made absolute.
    pub profile: SiteProfile,
    /// The trusted keys and threshold in force.
    pub trust: Trust,
    /// Which trust version that is.
    pub trust_version: TrustInForce,
}

/// The version of the trust in force and where it comes from (docs/SITE.md,
/// "Trust updates").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustInForce {
    /// 1 for the site profile's `[trust]`, else the accepted update's version.
    pub version: u64,
    /// SHA-256 of the accepted update file; `None` for the site profile.
    pub update_sha256: Option<String>,
    /// When the update was installed, Unix seconds.
    pub accepted_at: Option<i64>,
    /// When it expires, Unix seconds.
    pub expires_at: Option<u64>,
}

impl TrustInForce {
    /// `trust version N (site.toml [trust])` or `trust version N (update SHA…, installed …)`.
    pub fn describe(&self) -> String {
        match &self.update_sha256 {
            None => format!(
                "trust version {} (the site profile's [trust])",
                self.version
            ),
            Some(sha) => format!(
                "trust version {} (trust update {}, installed at {})",
                self.version,
                sha.chars().take(12).collect::<String>(),
                airlock_formats::time::rfc3339_signed(self.accepted_at.unwrap_or_default())
            ),
        }
    }
}

/// Checks, with the node's lock held, that the trust version read when the
/// profile at `path` was loaded is still the one in force: a `trust install`
/// may have finished in between.
///
/// # Errors
/// [`ApplyError::Site`] asking to run the command again when it changed.
pub fn check_trust_current(
    state: &crate::state::State,
    path: &Path,
    loaded: &TrustInForce,
) -> Result<(), ApplyError> {
    let now = state.trust_in_force()?.map_or(1, |r| r.version);
    if now != loaded.version {
        return Err(ApplyError::Site {
            path: path.to_owned(),
            reason: format!(
                "trust version {now} was installed while this command started with version {}; run it again",
                loaded.version
            ),
        });
    }
    Ok(())
}

/// The trust in force for a profile at `path` whose `[trust]` is `profile`
/// (key paths absolute) and whose state database lives in `state_dir`: the
/// highest trust update accepted there, else the profile's `[trust]` as
/// version 1.
///
/// # Errors
/// [`ApplyError::Site`] naming a key file or the threshold problem;
/// [`ApplyError::State`] when the state database or a kept update cannot be read.
pub fn trust_in_force(
    path: &Path,
    profile: &TrustProfile,
    state_dir: &Path,
) -> Result<(Trust, TrustInForce), ApplyError> {
    let initial = load_trust(path, profile)?;
    let record = match crate::state::State::open_existing(state_dir)? {
        Some(state) => state.trust_in_force()?,
        None => None,
    };
    let Some(record) = record else {
        return Ok((
            initial,
            TrustInForce {
                version: 1,
                update_sha256: None,
                accepted_at: None,
                expires_at: None,
            },
        ));
    };
    let kept = |e: airlock_formats::TrustError| ApplyError::Site {
        path: state_dir.join(crate::state::STATE_DB),
        reason: format!(
            "the trust update of version {} kept here cannot be read: {e}",
            record.version
        ),
    };
    let (_, document) =
        airlock_formats::TrustUpdate::from_json(record.document.as_bytes()).map_err(kept)?;
    let trust = document.trust().map_err(kept)?;
    Ok((
        trust,
        TrustInForce {
            version: document.version,
            update_sha256: Some(record.sha256),
            accepted_at: Some(record.accepted_at),
            expires_at: document.expires_at,
        },
    ))
}

/// `site.toml` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteProfile {
    /// Platform of this site, `OS-ARCH`; defaults to the applier's own.
    #[serde(default)]
    pub platform: Option<String>,
    /// The product this node runs: the bundle name it accepts (docs/SITE.md,
    /// "Top level"). Unset, the name of the installed release decides once
    /// airlock installed one.
    #[serde(default)]
    pub product: Option<String>,
    /// The service and how to control it.
    pub service: Service,
    /// Binary name (as in the bundle) to install path; overrides the bundle's default.
    #[serde(default)]
    pub binaries: BTreeMap<String, PathBuf>,
    /// Payload path of a `file` entry to install path; overrides the bundle's default.
    #[serde(default)]
    pub files: BTreeMap<String, PathBuf>,
    /// Tree name (as in the bundle) to install folder; overrides the bundle's default.
    #[serde(default)]
    pub trees: BTreeMap<String, PathBuf>,
    /// The folders a bundle may install into (docs/SITE.md, "Install
    /// roots"). Unset, the folders of the paths `binaries`, `files` and
    /// `trees` map; see [`Site::install_roots`].
    #[serde(default)]
    pub install_roots: Option<Vec<PathBuf>>,
    /// The service's data.
    #[serde(default)]
    pub data: Data,
    /// Keys and threshold.
    pub trust: TrustProfile,
    /// Where backups and state live.
    pub paths: Paths,
}

/// Where [`Site::install_roots`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallRootsFrom {
    /// `install_roots` in site.toml.
    Profile,
    /// The default: the folders of the paths site.toml maps.
    Mapped,
}

impl InstallRootsFrom {
    /// How messages name the source.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Profile => "install_roots in site.toml",
            Self::Mapped => {
                "the default: the folders of the paths [binaries], [files] and [trees] map"
            }
        }
    }
}

/// How to control and probe the service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Name used in messages.
    pub name: String,
    /// Shell command (`sh -c`) that stops the service.
    pub stop: String,
    /// Shell command that starts it; a daemon it leaves must not keep the
    /// command's stdout/stderr open (redirect to a log file).
    pub start: String,
    /// Health check.
    pub health: Probe,
    /// Version probe: its output must contain the running version (SemVer).
    #[serde(default)]
    pub version: Option<Probe>,
    /// Timeout of each stop, start and hook command, in seconds (default 60).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_secs: u64,
    /// How long to wait for health after a start, in seconds (default 30, at least 15 is wise).
    #[serde(default = "default_health_wait")]
    pub health_wait_secs: u64,
    /// How long to wait for the health check to fail after a stop, in seconds (default 30).
    #[serde(default = "default_health_wait")]
    pub stop_wait_secs: u64,
}

/// A check: a shell command (exit 0 = pass) or an HTTP GET (2xx = pass).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// Shell command.
    #[serde(default)]
    pub command: Option<String>,
    /// HTTP URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Timeout of one check, in seconds (default 5).
    #[serde(default = "default_probe_timeout")]
    pub timeout_secs: u64,
}

impl Probe {
    /// Checks that exactly one of `command` and `url` is given; `name` is
    /// the field, `profile` the file.
    ///
    /// # Errors
    /// [`ApplyError::Site`] naming the file and field.
    pub fn check(&self, profile: &Path, name: &str) -> Result<(), ApplyError> {
        if self.command.is_some() == self.url.is_some() {
            return Err(ApplyError::Site {
                path: profile.to_owned(),
                reason: format!("{name}: give exactly one of `command` and `url`"),
            });
        }
        Ok(())
    }

    /// The timeout of one check.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// The service's data.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    /// Named SQLite databases: name (as bundles name it) to file.
    #[serde(default)]
    pub databases: BTreeMap<String, PathBuf>,
    /// The Raft data directory (e.g. etcd's `--data-dir`).
    #[serde(default)]
    pub raft_dir: Option<PathBuf>,
    /// Config files backed up with the data.
    #[serde(default)]
    pub config_files: Vec<PathBuf>,
}

/// Trusted keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustProfile {
    /// Public key files (minisign `.pub`).
    pub keys: Vec<PathBuf>,
    /// Distinct keys that must sign (default 1).
    #[serde(default = "default_threshold")]
    pub threshold: usize,
    /// How far a bundle's `created_at` may be ahead of this node's time, in
    /// seconds (default 86400, one day; docs/SITE.md, "Time and expiry").
    #[serde(default = "default_clock_skew")]
    pub clock_skew_secs: u64,
}

/// The applier's own folders.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    /// State database and lock.
    pub state_dir: PathBuf,
    /// Backups, one folder per apply.
    pub backup_dir: PathBuf,
    /// Staging; defaults to `STATE_DIR/staging`.
    #[serde(default)]
    pub staging_dir: Option<PathBuf>,
    /// How many complete backups to keep (default 3, at least 1).
    #[serde(default = "default_keep")]
    pub keep_backups: usize,
}

fn default_command_timeout() -> u64 {
    60
}
fn default_health_wait() -> u64 {
    30
}
fn default_probe_timeout() -> u64 {
    5
}
fn default_threshold() -> usize {
    1
}
fn default_clock_skew() -> u64 {
    86_400
}
fn default_keep() -> usize {
    3
}

/// Reads the trusted keys of the profile at `path` (key paths already
/// absolute) into a [`Trust`].
///
/// # Errors
/// [`ApplyError::Site`] naming the key file or the threshold problem.
pub fn load_trust(path: &Path, profile: &TrustProfile) -> Result<Trust, ApplyError> {
    let site_err = |reason: String| ApplyError::Site {
        path: path.to_owned(),
        reason,
    };
    let mut keys = Vec::new();
    for key in &profile.keys {
        let text = fs_err::read_to_string(key).map_err(|e| site_err(format!("trust.keys: {e}")))?;
        keys.push(
            PublicKey::from_minisign(&text)
                .map_err(|e| site_err(format!("trust.keys: `{}`: {e}", key.display())))?,
        );
    }
    Trust::new(keys, profile.threshold).map_err(|e| site_err(format!("trust: {e}")))
}

/// Reads a profile's text.
fn read(path: &Path) -> Result<String, ApplyError> {
    // ApplyError::SiteUnreadable names the file; fs-err would name it twice.
    #[allow(clippy::disallowed_methods)]
    std::fs::read_to_string(path).map_err(|source| ApplyError::SiteUnreadable {
        path: path.to_owned(),
        source,
    })
}

/// The site profile a command uses when neither `--site` nor
/// [`SITE_ENV`] names one (docs/SITE.md, "Where the profile is").
pub const DEFAULT_SITE: &str = "/etc/airlock/site.toml";

/// The environment variable that names the site profile when `--site` is
/// not given.
pub const SITE_ENV: &str = "AIRLOCK_SITE";

/// Where a command's site profile path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileFrom {
    /// `--site`.
    Flag,
    /// [`SITE_ENV`].
    Env,
    /// [`DEFAULT_SITE`].
    Default,
}

impl ProfileFrom {
    /// How an error names it: `given with --site`, ....
    pub fn describe(self) -> String {
        match self {
            Self::Flag => "given with --site".into(),
            Self::Env => format!("named by {SITE_ENV}"),
            Self::Default => format!("the default: no --site given and {SITE_ENV} is not set"),
        }
    }
}

/// The site profile to use: `flag` (`--site`), else [`SITE_ENV`] when set
/// and not empty, else [`DEFAULT_SITE`].
///
/// # Errors
/// [`ApplyError::SiteMissing`] when no file is there.
pub fn locate(flag: Option<PathBuf>) -> Result<PathBuf, ApplyError> {
    let (path, from) = match flag {
        Some(p) => (p, ProfileFrom::Flag),
        None => match std::env::var_os(SITE_ENV).filter(|v| !v.is_empty()) {
            Some(p) => (PathBuf::from(p), ProfileFrom::Env),
            None => (PathBuf::from(DEFAULT_SITE), ProfileFrom::Default),
        },
    };
    // A path that exists but cannot be read is SiteUnreadable, later.
    if matches!(path.try_exists(), Ok(false)) {
        return Err(ApplyError::SiteMissing { path, from });
    }
    Ok(path)
}

/// Which kind of profile a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileKind {
    /// A node's `site.toml`.
    Node,
    /// A cluster profile, with a `[cluster]` table (docs/SITE.md, "Cluster
    /// profile").
    Cluster,
}

/// Reads and parses a profile of `kind`; returns it and its folder, made
/// absolute.
///
/// # Errors
/// [`ApplyError::ProfileKind`] when it is the other kind; [`ApplyError::Site`]
/// naming the file and field.
pub fn read_profile<T: serde::de::DeserializeOwned>(
    path: &Path,
    kind: ProfileKind,
) -> Result<(T, PathBuf), ApplyError> {
    let site_err = |reason: String| ApplyError::Site {
        path: path.to_owned(),
        reason,
    };
    let text = read(path)?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| site_err(e.to_string()))?;
    let found = if table.contains_key("cluster") {
        ProfileKind::Cluster
    } else {
        ProfileKind::Node
    };
    if found != kind {
        return Err(ApplyError::ProfileKind {
            path: path.to_owned(),
            expected: kind,
        });
    }
    let profile = T::deserialize(table).map_err(|e| site_err(e.to_string()))?;
    let dir = std::path::absolute(airlock_formats::durable::parent_of(path))
        .map_err(|e| site_err(e.to_string()))?;
    Ok((profile, dir))
}

/// Whether the profile at `path` describes a cluster (has a `[cluster]` table).
///
/// # Errors
/// [`ApplyError::Site`] when the file cannot be read or is not TOML.
pub fn is_cluster_profile(path: &Path) -> Result<bool, ApplyError> {
    let site_err = |reason: String| ApplyError::Site {
        path: path.to_owned(),
        reason,
    };
    let text = read(path)?;
    let value: toml::Table = toml::from_str(&text).map_err(|e| site_err(e.to_string()))?;
    Ok(value.contains_key("cluster"))
}

impl Site {
    /// Loads and checks `site.toml`, reading the trusted keys.
    ///
    /// # Errors
    /// [`ApplyError::Site`] naming the file and field.
    pub fn load(path: &Path) -> Result<Self, ApplyError> {
        match Self::load_for_reading(path)? {
            (site, None) => Ok(site),
            (_, Some(trust_error)) => Err(trust_error),
        }
    }

    /// [`Site::load`] for commands that only read the node's state
    /// (`status`, `history`, `backups list|verify`): when the trusted keys
    /// cannot be read, the site comes with [`Trust::nothing`] and the error
    /// that says why, for the command to show.
    ///
    /// # Errors
    /// As [`Site::load`], except for the trusted keys.
    pub fn load_for_reading(path: &Path) -> Result<(Self, Option<ApplyError>), ApplyError> {
        let site_err = |reason: String| ApplyError::Site {
            path: path.to_owned(),
            reason,
        };
        let (mut profile, dir): (SiteProfile, PathBuf) = read_profile(path, ProfileKind::Node)?;
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        profile.binaries.values_mut().for_each(abs);
        profile.files.values_mut().for_each(abs);
        profile.trees.values_mut().for_each(abs);
        profile.install_roots.iter_mut().flatten().for_each(abs);
        profile.data.databases.values_mut().for_each(abs);
        profile.data.raft_dir.iter_mut().for_each(abs);
        profile.data.config_files.iter_mut().for_each(abs);
        profile.trust.keys.iter_mut().for_each(abs);
        abs(&mut profile.paths.state_dir);
        abs(&mut profile.paths.backup_dir);
        profile.paths.staging_dir.iter_mut().for_each(abs);
        profile.service.health.check(path, "service.health")?;
        if let Some(p) = &profile.service.version {
            p.check(path, "service.version")?;
        }
        if let Some(root) = profile
            .install_roots
            .iter()
            .flatten()
            .find(|r| r.parent().is_none())
        {
            return Err(site_err(format!(
                "install_roots: `{}` would let a bundle write anywhere; name the folders it may write into",
                root.display()
            )));
        }
        if profile.paths.keep_backups == 0 {
            return Err(site_err("paths.keep_backups must be at least 1".into()));
        }
        let (trust, trust_version, trust_error) =
            match trust_in_force(path, &profile.trust, &profile.paths.state_dir) {
                Ok((trust, version)) => (trust, version, None),
                Err(e) => (
                    Trust::nothing(),
                    TrustInForce {
                        version: 1,
                        update_sha256: None,
                        accepted_at: None,
                        expires_at: None,
                    },
                    Some(e),
                ),
            };
        let site = Self {
            path: path.to_owned(),
            dir,
            profile,
            trust,
            trust_version,
        };
        Ok((site, trust_error))
    }

    /// Every install path `[binaries]`, `[files]` and `[trees]` map.
    pub fn mapped_paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.profile
            .binaries
            .values()
            .chain(self.profile.files.values())
            .chain(self.profile.trees.values())
    }

    /// The folders a bundle may install into, and where they come from:
    /// `install_roots` of site.toml, or by default the folder of every path
    /// that `[binaries]`, `[files]` and `[trees]` map (docs/SITE.md,
    /// "Install roots"). A site that maps nothing and names no roots lets a
    /// bundle install nowhere.
    pub fn install_roots(&self) -> (Vec<PathBuf>, InstallRootsFrom) {
        if let Some(roots) = &self.profile.install_roots {
            return (roots.clone(), InstallRootsFrom::Profile);
        }
        let mut roots: Vec<PathBuf> = self
            .mapped_paths()
            // A path mapped into `/` makes itself the root, never `/`.
            .map(|p| match p.parent() {
                Some(parent) if parent.parent().is_some() => parent.to_owned(),
                _ => p.clone(),
            })
            .collect();
        roots.sort();
        roots.dedup();
        // A root inside another adds nothing.
        let all = roots.clone();
        roots.retain(|r| !all.iter().any(|o| o != r && r.starts_with(o)));
        (roots, InstallRootsFrom::Mapped)
    }

    /// The staging folder.
    pub fn staging_dir(&self) -> PathBuf {
        self.profile
            .paths
            .staging_dir
            .clone()
            .unwrap_or_else(|| self.profile.paths.state_dir.join("staging"))
    }

    /// The log file of apply `id`: `STATE_DIR/logs/apply-ID.log`.
    pub fn log_path(&self, id: i64) -> PathBuf {
        self.profile
            .paths
            .state_dir
            .join("logs")
            .join(format!("apply-{id}.log"))
    }

    /// The platform bundles must be built for.
    pub fn platform(&self) -> String {
        self.profile
            .platform
            .clone()
            .unwrap_or_else(|| format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH))
    }
}
