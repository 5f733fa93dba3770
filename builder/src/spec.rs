//! The bundle spec, `bundle.toml`: what the release engineer puts in a bundle
//! (docs/FORMAT.md, "Bundle spec"). Relative source paths are relative to the
//! spec file's folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::error::BuildError;

/// A parsed bundle spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Bundle name.
    pub name: String,
    /// Release version (SemVer 2.0.0), checked when the spec is loaded.
    pub version: String,
    /// Target platform, `OS-ARCH`; defaults to this machine's.
    #[serde(default)]
    pub platform: Option<String>,
    /// SemVer requirement on the installed version this bundle upgrades.
    pub upgrades_from: String,
    /// Lowest applier version needed; defaults to this airlock's version.
    #[serde(default)]
    pub min_applier_version: Option<String>,
    /// Whether this version may run beside the previous one (rolling upgrade).
    #[serde(default = "default_true")]
    pub rolling_allowed: bool,
    /// Days after the build time when the bundle expires.
    #[serde(default)]
    pub expires_after_days: Option<u64>,
    /// Executables to install.
    #[serde(default, rename = "binary")]
    pub binaries: Vec<BinarySpec>,
    /// Migration folders, one per database.
    #[serde(default)]
    pub migrations: Vec<MigrationsSpec>,
    /// Hook scripts.
    #[serde(default)]
    pub hooks: HooksSpec,
    /// Other files to install.
    #[serde(default, rename = "file")]
    pub files: Vec<FileSpec>,
    /// Folders installed as a whole.
    #[serde(default, rename = "tree")]
    pub trees: Vec<TreeSpec>,
    /// A signed trust update (`airlock-build trust new`) the bundle carries
    /// to its sites (docs/FORMAT.md, "Trust updates").
    #[serde(default)]
    pub trust_update: Option<PathBuf>,
}

/// A folder installed as a whole (docs/FORMAT.md, "`[[tree]]`").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeSpec {
    /// Tree name; defaults to the install path's last component.
    #[serde(default)]
    pub name: Option<String>,
    /// Source folder.
    pub source: PathBuf,
    /// Absolute folder it replaces.
    pub install_path: String,
    /// Permission bits of every file, octal text; by default each file keeps
    /// its own (`0o777` of them).
    #[serde(default, deserialize_with = "octal_opt")]
    pub file_mode: Option<u32>,
    /// Permission bits of every folder, octal text (default `0755`).
    #[serde(default = "mode_755", deserialize_with = "octal")]
    pub dir_mode: u32,
}

fn default_true() -> bool {
    true
}

/// One executable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinarySpec {
    /// Name the site profile maps to an install path.
    pub name: String,
    /// Source file.
    pub source: PathBuf,
    /// Default absolute install path.
    pub install_path: String,
    /// Permission bits, octal text such as `"0755"` (default `0755`).
    #[serde(default = "mode_755", deserialize_with = "octal")]
    pub mode: u32,
}

/// One migration folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationsSpec {
    /// Database name in the site profile.
    pub database: String,
    /// Folder written for diesel, sqlx or golang-migrate.
    pub dir: PathBuf,
    /// The tool whose rules the folder follows; detected from its layout
    /// when absent (docs/FORMAT.md, "`[[migrations]]`").
    #[serde(default)]
    pub tool: Option<airlock_formats::MigrationTool>,
    /// Whether the service's tool enforces foreign keys, when it differs
    /// from the tool's default (diesel with a bundled SQLite, or
    /// golang-migrate with `_foreign_keys=1`, have them on).
    #[serde(default)]
    pub foreign_keys: Option<bool>,
    /// sqlx and golang-migrate: the history table, when the service names
    /// it (`sqlx.toml` `[migrate] table-name`, `x-migrations-table`).
    #[serde(default)]
    pub history_table: Option<String>,
    /// sqlx: characters its checksums leave out (`sqlx.toml` `[migrate]
    /// ignored-chars`), each a one-character string such as `"\r"`.
    #[serde(default)]
    pub ignored_chars: Vec<String>,
    /// golang-migrate: run each script in a transaction, as its `sqlite3`
    /// driver does unless the URL says `x-no-tx-wrap=true`. Default
    /// `false`: scripts run as written, and may hold their own `BEGIN` and
    /// `COMMIT`.
    #[serde(default)]
    pub tx_wrap: bool,
}

/// Hook scripts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksSpec {
    /// Runs before the service stops.
    #[serde(default)]
    pub pre_stop: Option<PathBuf>,
    /// Runs after everything is installed and migrated, before the start:
    /// a data-format migration.
    #[serde(default)]
    pub pre_start: Option<PathBuf>,
    /// `"rerun"` or `"rollback"` (default): what `resume` does when the
    /// apply was interrupted inside `pre_start`.
    #[serde(default)]
    pub pre_start_on_interrupt: Option<airlock_formats::OnInterrupt>,
    /// Runs after the new version is healthy.
    #[serde(default)]
    pub post_start: Option<PathBuf>,
}

/// Another file to install.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Source file.
    pub source: PathBuf,
    /// Absolute install path.
    pub install_path: String,
    /// Permission bits, octal text (default `0644`).
    #[serde(default = "mode_644", deserialize_with = "octal")]
    pub mode: u32,
}

fn mode_755() -> u32 {
    0o755
}

fn mode_644() -> u32 {
    0o644
}

fn octal_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    octal(d).map(Some)
}

fn octal<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let s = String::deserialize(d)?;
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "mode `{s}` is not octal permission bits like \"0755\""
            ))
        })
}

impl Spec {
    /// Reads a spec file.
    ///
    /// # Errors
    /// [`BuildError::Spec`] naming the file for unreadable or invalid TOML.
    pub fn load(path: &Path) -> Result<Self, BuildError> {
        // BuildError::Spec names the file; fs-err would name it twice.
        #[allow(clippy::disallowed_methods)]
        let text = std::fs::read_to_string(path).map_err(|e| BuildError::Spec {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| BuildError::Spec {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }
}
