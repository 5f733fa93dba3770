//! The signed manifest: what a bundle is, what it may upgrade, and every
//! payload file with its size, mode and SHA-256 (docs/FORMAT.md, "Manifest").

use std::collections::{BTreeMap, BTreeSet};

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::error::ManifestError;
use crate::migration::{MigrationTool, MigrationVersion, NameRule};
use crate::path::BundlePath;
use crate::tree::{Tree, TreeShape};

/// The format marker this crate reads and writes.
pub const FORMAT_MARKER: &str = "airlock-bundle/1";

/// Smallest payload chunk size accepted, in bytes (64 KiB).
pub const MIN_CHUNK_SIZE: u64 = 64 * 1024;
/// Largest payload chunk size accepted, in bytes (64 MiB): a reader buffers one chunk.
pub const MAX_CHUNK_SIZE: u64 = 64 * 1024 * 1024;
/// Chunk size the builder uses unless told otherwise, in bytes (4 MiB).
pub const DEFAULT_CHUNK_SIZE: u64 = 4 * 1024 * 1024;

/// The manifest, stored as `manifest.json` and signed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT_MARKER`].
    pub format: String,
    /// Bundle name: `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 64 bytes; the file is `NAME-VERSION.airlock`.
    pub name: String,
    /// The release this bundle installs (SemVer 2.0.0).
    pub version: Version,
    /// Platform the binaries run on, `OS-ARCH` as Rust names them, e.g. `linux-x86_64`.
    pub platform: String,
    /// Installed versions this bundle may upgrade (a SemVer requirement, Cargo syntax).
    pub upgrades_from: VersionReq,
    /// Lowest `airlock-apply` version that understands this bundle.
    pub min_applier_version: Version,
    /// Whether this version may run beside the previous one in a cluster (rolling upgrade).
    pub rolling_allowed: bool,
    /// When the bundle was built: Unix seconds (`SOURCE_DATE_EPOCH` when set).
    pub created_at: u64,
    /// After this moment (Unix seconds) appliers refuse the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Scripts the applier runs around the service restart.
    #[serde(default)]
    pub hooks: Hooks,
    /// Folders installed as a whole, sorted by name (docs/FORMAT.md, "Trees").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trees: Vec<Tree>,
    /// Every payload file, sorted by path (migrations apply in their tool's order, [`Manifest::migrations`]).
    pub files: Vec<FileEntry>,
    /// The compressed payload: its size and the digest of each chunk.
    pub payload: PayloadInfo,
}

/// Hook scripts, each the path of a `script` entry of the payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Runs before the service stops (drain traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<BundlePath>,
    /// Runs after the binaries, files, trees and SQL migrations are
    /// installed and before the service starts: a data-format migration
    /// (docs/SITE.md, "Hooks").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_start: Option<BundlePath>,
    /// What `resume` does when the apply was interrupted inside
    /// `pre_start`: run it again (it must be idempotent) or roll back.
    /// Absent: roll back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_start_on_interrupt: Option<OnInterrupt>,
    /// Runs after the new version is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_start: Option<BundlePath>,
}

/// What `resume` does with an apply interrupted inside a `pre_start` hook.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInterrupt {
    /// Undo the apply, restoring the backups.
    #[default]
    Rollback,
    /// Run the hook again and carry on with the apply.
    Rerun,
}

/// What a payload file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An executable the applier installs over the service's binary of the same name.
    Binary,
    /// A SQL migration for one of the site's databases.
    Migration,
    /// A hook script.
    Script,
    /// Any other file, installed at its install path.
    File,
    /// A file of a [`Tree`], stored as `trees/NAME/PATH`.
    Tree,
}

/// One payload file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path inside the payload.
    pub path: BundlePath,
    /// What the file is for.
    pub role: Role,
    /// Size in bytes.
    pub size: u64,
    /// Unix permission bits, at most `0o777` (no setuid, setgid or sticky bit).
    pub mode: u32,
    /// SHA-256 of the contents.
    pub sha256: Sha256Digest,
    /// For `binary`: the name the site profile maps to an install path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// For `binary` and `file`: the default absolute install path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_path: Option<String>,
    /// For `migration`: which database, version and direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationInfo>,
}

/// Where a migration belongs, which tool's rules it follows, and how it runs
/// (docs/FORMAT.md, "Migration information").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationInfo {
    /// Name of the database in the site profile.
    pub database: String,
    /// The tool whose rules the migration follows. Bundles built by airlock
    /// 0.1 have none: then the payload layout tells, a folder holding
    /// `up.sql` being diesel's and a file sqlx's (see [`Manifest::migrations`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<MigrationTool>,
    /// Version as the tool records it in its history table: `1` (sqlx,
    /// golang-migrate), `20240214140000` (diesel). airlock 0.1 wrote it as
    /// the name spelled it (`0001`, `2024-02-14-140000`).
    pub version: String,
    /// airlock 0.1 only, and ignored: the version's digits as a number. The
    /// tool's own order applies instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<u64>,
    /// The tool's description: sqlx's (`add orders`), golang-migrate's title,
    /// or the diesel folder name after its first `_`.
    pub description: String,
    /// `up` applies the migration, `down` reverts it (kept for the record, never run by apply).
    pub direction: Direction,
    /// Whether the tool runs it in a transaction of its own: diesel unless
    /// `metadata.toml` says otherwise, sqlx unless the file starts with
    /// `-- no-transaction`, golang-migrate as the spec's `tx_wrap` says.
    /// Absent (airlock 0.1): `true`.
    #[serde(default = "yes")]
    pub transaction: bool,
    /// Whether foreign keys are enforced while it runs, when the service
    /// sets its tool up otherwise than the tool's default
    /// ([`MigrationTool::default_foreign_keys`]). Absent: the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_keys: Option<bool>,
    /// The tool's history table, when the service names it otherwise than
    /// the tool's default ([`MigrationTool::history_table`]); sqlx and
    /// golang-migrate only. Absent: the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_table: Option<String>,
    /// sqlx only: SHA-384 of the file, 96 lowercase hex digits, the checksum
    /// `_sqlx_migrations` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

fn yes() -> bool {
    true
}

/// One migration of a manifest, read by its tool's rules: what the applier
/// runs and records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration<'a> {
    /// The payload file.
    pub entry: &'a FileEntry,
    /// Its migration information as the manifest says.
    pub info: &'a MigrationInfo,
    /// The tool (inferred from the layout for airlock 0.1 bundles).
    pub tool: MigrationTool,
    /// The migration's name as written: the diesel folder or the file name.
    pub name: &'a str,
    /// The version as the tool compares and records it.
    pub version: MigrationVersion,
    /// The tool's description.
    pub description: String,
    /// `up` or `down`.
    pub direction: Direction,
    /// Whether the tool runs it in a transaction of its own. For sqlx the
    /// file's first bytes decide at apply time as well.
    pub transaction: bool,
    /// Whether foreign keys are enforced while it runs.
    pub foreign_keys: bool,
    /// The tool's history table.
    pub history_table: String,
}

/// Direction of a migration script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Applies the change.
    Up,
    /// Reverts the change.
    Down,
}

/// The compressed payload's integrity data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadInfo {
    /// Always `zstd`: a zstd-compressed tar.
    pub compression: String,
    /// Size of the compressed payload, in bytes.
    pub size: u64,
    /// Chunk size, in bytes; the last chunk may be shorter.
    pub chunk_size: u64,
    /// SHA-256 of each chunk of the compressed payload, in order.
    pub chunks: Vec<Sha256Digest>,
    /// Sum of the uncompressed file sizes, in bytes (bounds decompression).
    pub unpacked_size: u64,
}

impl Manifest {
    /// Parses and validates manifest bytes.
    ///
    /// # Errors
    /// [`ManifestError`] for invalid JSON, an unknown format version, or a rule of
    /// [`Manifest::validate`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        // Read the format first so a newer bundle gets a clear "too new" error
        // instead of a complaint about fields this version does not know.
        #[derive(Deserialize)]
        struct FormatOnly {
            format: String,
        }
        let format: FormatOnly =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        if format.format != FORMAT_MARKER {
            return Err(ManifestError::UnknownFormat(format.format));
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Serialises to the bytes that get signed (pretty JSON, fields in declaration order).
    ///
    /// # Errors
    /// [`ManifestError`] when the manifest breaks a rule of [`Manifest::validate`].
    pub fn to_json(&self) -> Result<Vec<u8>, ManifestError> {
        self.validate()?;
        let mut out =
            serde_json::to_vec_pretty(self).map_err(|e| ManifestError::Json(e.to_string()))?;
        out.push(b'\n');
        Ok(out)
    }

    /// The bundle's file name, `NAME-VERSION.airlock`.
    pub fn file_name(&self) -> String {
        format!("{}-{}.airlock", self.name, self.version)
    }

    /// Checks every rule of docs/FORMAT.md that the types alone do not enforce.
    ///
    /// # Errors
    /// The first [`ManifestError`] found.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |field: &str, reason: String| ManifestError::Invalid {
            field: field.to_owned(),
            reason,
        };
        if self.format != FORMAT_MARKER {
            return Err(ManifestError::UnknownFormat(self.format.clone()));
        }
        validate_name(&self.name).map_err(|r| invalid("name", r))?;
        if self.platform.is_empty() || !self.platform.chars().all(safe_char) {
            return Err(invalid(
                "platform",
                format!("`{}` is not of the form OS-ARCH", self.platform),
            ));
        }
        let mut paths = BTreeSet::new();
        let mut binaries = BTreeSet::new();
        let mut migrations: BTreeMap<(&str, MigrationVersion, Direction), &BundlePath> =
            BTreeMap::new();
        let mut tools: BTreeMap<&str, (MigrationTool, bool, String)> = BTreeMap::new();
        let mut previous: Option<&BundlePath> = None;
        let mut unpacked = 0u64;
        for file in &self.files {
            let field = format!("files[{}]", file.path);
            if let Some(prev) = previous {
                if prev >= &file.path {
                    return Err(invalid(
                        &field,
                        format!("entries must be sorted by path and unique (after `{prev}`)"),
                    ));
                }
            }
            previous = Some(&file.path);
            paths.insert(&file.path);
            if file.mode > 0o777 {
                return Err(invalid(
                    &field,
                    format!(
                        "mode {:o} has bits above 0o777 (setuid, setgid or sticky)",
                        file.mode
                    ),
                ));
            }
            unpacked = unpacked
                .checked_add(file.size)
                .ok_or_else(|| invalid(&field, "sizes overflow".into()))?;
            if let Some(install) = &file.install_path {
                validate_install_path(install).map_err(|r| invalid(&field, r))?;
            }
            match file.role {
                Role::Binary => {
                    let name = file
                        .name
                        .as_deref()
                        .ok_or_else(|| invalid(&field, "a binary needs a name".into()))?;
                    validate_name(name).map_err(|r| invalid(&field, r))?;
                    if !binaries.insert(name) {
                        return Err(invalid(
                            &field,
                            format!("binary name `{name}` is used twice"),
                        ));
                    }
                    if file.migration.is_some() {
                        return Err(invalid(&field, "a binary has no migration data".into()));
                    }
                }
                Role::Migration => {
                    let m = file.migration.as_ref().ok_or_else(|| {
                        invalid(&field, "a migration needs its database and version".into())
                    })?;
                    validate_name(&m.database).map_err(|r| invalid(&field, r))?;
                    if !crate::shown::is_safe(&m.version) || !crate::shown::is_safe(&m.description)
                    {
                        return Err(invalid(
                            &field,
                            "a migration's version and description may not hold control characters"
                                .into(),
                        ));
                    }
                    if file.install_path.is_some() || file.name.is_some() {
                        return Err(invalid(&field, "a migration is not installed".into()));
                    }
                    let read = resolve(file, m).map_err(|r| invalid(&field, r))?;
                    let setup = (read.tool, read.foreign_keys, read.history_table.clone());
                    if let Some(other) = tools.insert(m.database.as_str(), setup.clone()) {
                        if other.0 != read.tool {
                            return Err(invalid(
                                &field,
                                format!(
                                    "database `{}` has migrations of both {} and {}; one service has one migrator",
                                    m.database, other.0, read.tool
                                ),
                            ));
                        }
                        if other != setup {
                            return Err(invalid(
                                &field,
                                format!(
                                    "the migrations of database `{}` disagree on foreign keys or the history table",
                                    m.database
                                ),
                            ));
                        }
                    }
                    if let Some(other) = migrations.insert(
                        (m.database.as_str(), read.version.clone(), read.direction),
                        &file.path,
                    ) {
                        return Err(invalid(
                            &field,
                            format!(
                                "migration version {} of database `{}` is also `{other}`",
                                read.version, m.database
                            ),
                        ));
                    }
                }
                Role::Tree => {
                    if file.migration.is_some()
                        || file.name.is_some()
                        || file.install_path.is_some()
                    {
                        return Err(invalid(
                            &field,
                            "a tree's file has no name, install path or migration data: its tree has the install path".into(),
                        ));
                    }
                }
                Role::Script | Role::File => {
                    if file.migration.is_some() || file.name.is_some() {
                        return Err(invalid(
                            &field,
                            "only binaries have names and only migrations have migration data"
                                .into(),
                        ));
                    }
                    if file.role == Role::File && file.install_path.is_none() {
                        return Err(invalid(&field, "a file needs an install path".into()));
                    }
                }
            }
        }
        self.validate_trees()?;
        if self.hooks.pre_start_on_interrupt.is_some() && self.hooks.pre_start.is_none() {
            return Err(invalid(
                "hooks.pre_start_on_interrupt",
                "is set, but there is no pre_start hook".into(),
            ));
        }
        for (hook, path) in [
            ("pre_stop", &self.hooks.pre_stop),
            ("pre_start", &self.hooks.pre_start),
            ("post_start", &self.hooks.post_start),
        ] {
            if let Some(path) = path {
                let is_script = self
                    .files
                    .iter()
                    .any(|f| &f.path == path && f.role == Role::Script);
                if !is_script {
                    return Err(invalid(
                        &format!("hooks.{hook}"),
                        format!("`{path}` is not a script entry of the payload"),
                    ));
                }
            }
        }
        if unpacked != self.payload.unpacked_size {
            return Err(invalid(
                "payload.unpacked_size",
                format!(
                    "is {} but the files add up to {unpacked}",
                    self.payload.unpacked_size
                ),
            ));
        }
        let p = &self.payload;
        if p.compression != "zstd" {
            return Err(invalid(
                "payload.compression",
                format!("`{}` is not `zstd`", p.compression),
            ));
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&p.chunk_size) {
            return Err(invalid(
                "payload.chunk_size",
                format!(
                    "{} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                    p.chunk_size
                ),
            ));
        }
        let expected_chunks = p.size.div_ceil(p.chunk_size);
        if p.chunks.len() as u64 != expected_chunks {
            return Err(invalid(
                "payload.chunks",
                format!(
                    "{} digests for {} bytes in chunks of {}; expected {expected_chunks}",
                    p.chunks.len(),
                    p.size,
                    p.chunk_size
                ),
            ));
        }
        Ok(())
    }

    /// The migrations of `database`, `up` and `down`, in the order their
    /// tool applies them (by version as the tool compares versions, `up`
    /// before `down`), each read by its tool's rules.
    ///
    /// # Errors
    /// [`ManifestError::Invalid`] for a migration that breaks its tool's
    /// rules, which [`Manifest::validate`] has refused already.
    pub fn migrations(&self, database: &str) -> Result<Vec<Migration<'_>>, ManifestError> {
        let mut list = Vec::new();
        for file in &self.files {
            let Some(info) = file.migration.as_ref().filter(|m| m.database == database) else {
                continue;
            };
            list.push(
                resolve(file, info).map_err(|reason| ManifestError::Invalid {
                    field: format!("files[{}]", file.path),
                    reason,
                })?,
            );
        }
        list.sort_by(|a, b| (&a.version, a.direction).cmp(&(&b.version, b.direction)));
        Ok(list)
    }

    /// Names of the databases that have migrations in this bundle, sorted.
    pub fn migrated_databases(&self) -> BTreeSet<&str> {
        self.files
            .iter()
            .filter_map(|f| f.migration.as_ref())
            .map(|m| m.database.as_str())
            .collect()
    }

    /// Checks the trees (docs/FORMAT.md, "Trees"): names, install paths
    /// that neither nest nor hold another install path, and for each tree
    /// its folders, files and links (every link by
    /// [`TreeShape::check_link`]).
    fn validate_trees(&self) -> Result<(), ManifestError> {
        let invalid = |field: &str, reason: String| ManifestError::Invalid {
            field: field.to_owned(),
            reason,
        };
        let mut previous: Option<&str> = None;
        for tree in &self.trees {
            let field = format!("trees[{}]", crate::shown::shown(&tree.name));
            validate_name(&tree.name).map_err(|r| invalid(&field, r))?;
            if previous.is_some_and(|p| p >= tree.name.as_str()) {
                return Err(invalid(
                    &field,
                    "trees must be sorted by name and unique".into(),
                ));
            }
            previous = Some(&tree.name);
            validate_install_path(&tree.install_path).map_err(|r| invalid(&field, r))?;
            if tree.install_path == "/" {
                return Err(invalid(&field, "a tree cannot replace `/`".into()));
            }
            if tree.dir_mode > 0o777 {
                return Err(invalid(
                    &field,
                    format!("dir_mode {:o} has bits above 0o777", tree.dir_mode),
                ));
            }
            let inside = |path: &str| {
                path.strip_prefix(tree.install_path.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            };
            for other in self.trees.iter().filter(|t| t.name != tree.name) {
                if inside(&other.install_path) {
                    return Err(invalid(
                        &field,
                        format!("tree `{}` would be installed inside it", other.name),
                    ));
                }
            }
            if let Some(f) = self
                .files
                .iter()
                .find(|f| f.install_path.as_deref().is_some_and(inside))
            {
                return Err(invalid(
                    &field,
                    format!(
                        "`{}` would be installed inside it, and replaced with it",
                        f.path
                    ),
                ));
            }
            let prefix = format!("trees/{}/", tree.name);
            let mut shape = TreeShape::default();
            for d in &tree.dirs {
                shape.dirs.insert(d.as_str());
            }
            if tree.dirs.windows(2).any(|w| w[0] >= w[1]) {
                return Err(invalid(&field, "dirs must be sorted and unique".into()));
            }
            for l in &tree.links {
                shape.links.insert(l.path.as_str());
            }
            if tree.links.windows(2).any(|w| w[0].path >= w[1].path) {
                return Err(invalid(
                    &field,
                    "links must be sorted by path and unique".into(),
                ));
            }
            for f in self.files.iter().filter(|f| f.role == Role::Tree) {
                if let Some(rel) = f.path.as_str().strip_prefix(&prefix) {
                    shape.files.insert(rel);
                }
            }
            shape.check().map_err(|r| invalid(&field, r))?;
            for l in &tree.links {
                shape.check_link(l).map_err(|r| invalid(&field, r))?;
            }
        }
        for f in self.files.iter().filter(|f| f.role == Role::Tree) {
            let named = f
                .path
                .as_str()
                .strip_prefix("trees/")
                .and_then(|rest| rest.split_once('/'))
                .map(|(name, _)| name);
            if !named.is_some_and(|n| self.trees.iter().any(|t| t.name == n)) {
                return Err(invalid(
                    &format!("files[{}]", f.path),
                    "a tree's file is stored as `trees/NAME/PATH` for a tree NAME of `trees`"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The tree named `name`.
    pub fn tree(&self, name: &str) -> Option<&Tree> {
        self.trees.iter().find(|t| t.name == name)
    }

    /// The files of tree `name`, each with its path relative to the tree.
    pub fn tree_files<'a>(
        &'a self,
        name: &str,
    ) -> impl Iterator<Item = (&'a FileEntry, &'a str)> + 'a {
        let prefix = format!("trees/{name}/");
        self.files.iter().filter_map(move |f| {
            (f.role == Role::Tree)
                .then(|| f.path.as_str().strip_prefix(prefix.as_str()))
                .flatten()
                .map(|rel| (f, rel))
        })
    }

    /// The entry at `path`.
    pub fn file(&self, path: &BundlePath) -> Option<&FileEntry> {
        self.files
            .binary_search_by(|f| f.path.cmp(path))
            .ok()
            .and_then(|i| self.files.get(i))
    }
}

/// Reads one migration entry by its tool's rules (docs/FORMAT.md,
/// "Migration information"): its payload path is
/// `migrations/DATABASE/FILE`, or `migrations/DATABASE/FOLDER/FILE` for
/// diesel; the tool's reading of that name must give the version,
/// description and direction the manifest states.
fn resolve<'a>(entry: &'a FileEntry, info: &'a MigrationInfo) -> Result<Migration<'a>, String> {
    let prefix = format!("migrations/{}/", info.database);
    let rest = entry.path.as_str().strip_prefix(&prefix).ok_or_else(|| {
        format!(
            "a migration of database `{}` is stored below `{prefix}`",
            info.database
        )
    })?;
    let (folder, file) = match rest.split_once('/') {
        Some((folder, file)) if !file.contains('/') => (Some(folder), file),
        None => (None, rest),
        Some(_) => return Err("a migration is a file or a folder's file, no deeper".into()),
    };
    let tool = match (info.tool, folder) {
        (Some(tool), _) => tool,
        (None, Some(_)) => MigrationTool::Diesel,
        (None, None) => MigrationTool::Sqlx,
    };
    let name = match tool.read_name(folder, file) {
        NameRule::Migration(name) => name,
        NameRule::Ignored => {
            return Err(format!(
                "{tool} does not read `{rest}` as a migration{}",
                if folder.is_some() {
                    " (a diesel folder holds up.sql and down.sql)"
                } else {
                    ""
                }
            ))
        }
        NameRule::Refused(reason) => {
            return Err(format!(
                "{tool} refuses `{rest}`: {reason}; rebuild the bundle"
            ))
        }
    };
    if info.tool.is_some() {
        let stated = (
            info.version.as_str(),
            info.description.as_str(),
            info.direction,
        );
        let version = name.version.to_string();
        if stated != (version.as_str(), name.description.as_str(), name.direction) {
            return Err(format!(
                "{tool} reads `{rest}` as version {version} `{}` ({:?}), not as the manifest states",
                name.description, name.direction
            ));
        }
        match (tool, &info.checksum) {
            (MigrationTool::Sqlx, Some(c))
                if c.len() == 96 && c.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {}
            (MigrationTool::Sqlx, _) => {
                return Err(
                    "a sqlx migration needs its SHA-384 checksum as 96 lowercase hex digits".into(),
                )
            }
            (_, Some(_)) => {
                return Err(format!("only sqlx migrations have a checksum, not {tool}"))
            }
            (_, None) => {}
        }
        if let MigrationVersion::Unsigned(v) = name.version {
            if i64::try_from(v).is_err() {
                return Err(format!(
                    "golang-migrate records versions as signed 64-bit integers; {v} does not fit"
                ));
            }
        }
    }
    match &info.history_table {
        Some(_) if !tool.history_table_configurable() => {
            return Err(format!("{tool} has no configurable history table"))
        }
        Some(t) if !crate::migration::valid_history_table(t) => {
            return Err(format!(
                "history table `{}` is not a plain SQL name (letters, digits, `_`)",
                crate::shown::shown(t)
            ))
        }
        _ => {}
    }
    let name_as_written = folder.unwrap_or(file);
    Ok(Migration {
        entry,
        info,
        tool,
        name: name_as_written,
        version: name.version,
        description: name.description,
        direction: name.direction,
        transaction: info.transaction,
        foreign_keys: info.foreign_keys.unwrap_or(tool.default_foreign_keys()),
        history_table: info
            .history_table
            .clone()
            .unwrap_or_else(|| tool.history_table().to_owned()),
    })
}

fn safe_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Checks a bundle, binary or database name: `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 64 bytes.
///
/// # Errors
/// The reason, as a phrase.
pub fn validate_name(name: &str) -> Result<(), String> {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || name.len() > 64 || !name.chars().all(safe_char) {
        return Err(format!(
            "`{name}` is not a name: use letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most 64 bytes"
        ));
    }
    Ok(())
}

/// Checks an install path: absolute, no `.` or `..` components, no NUL.
///
/// # Errors
/// The reason, as a phrase.
pub fn validate_install_path(path: &str) -> Result<(), String> {
    if !crate::shown::is_safe(path) {
        return Err(format!(
            "install path `{}` has control characters",
            crate::shown::shown(path)
        ));
    }
    if !path.starts_with('/') {
        return Err(format!("install path `{path}` is not absolute"));
    }
    if path.contains('\0')
        || path[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "install path `{path}` has an empty, `.` or `..` component"
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format: FORMAT_MARKER.into(),
            name: "demo".into(),
            version: Version::new(1, 1, 0),
            platform: "linux-x86_64".into(),
            upgrades_from: VersionReq::parse("^1.0.0").unwrap(),
            min_applier_version: Version::new(0, 1, 0),
            rolling_allowed: true,
            created_at: 1_700_000_000,
            expires_at: None,
            hooks: Hooks::default(),
            trees: Vec::new(),
            files: vec![FileEntry {
                path: BundlePath::parse("bin/demo").unwrap(),
                role: Role::Binary,
                size: 3,
                mode: 0o755,
                sha256: Sha256Digest::of(b"abc"),
                name: Some("demo".into()),
                install_path: Some("/opt/demo/bin/demo".into()),
                migration: None,
            }],
            payload: PayloadInfo {
                compression: "zstd".into(),
                size: 10,
                chunk_size: DEFAULT_CHUNK_SIZE,
                chunks: vec![Sha256Digest::of(b"x")],
                unpacked_size: 3,
            },
        }
    }

    #[test]
    fn round_trips_through_json() {
        let m = sample();
        let bytes = m.to_json().unwrap();
        assert_eq!(Manifest::from_json(&bytes).unwrap(), m);
    }

    #[test]
    fn newer_format_is_refused_by_name() {
        let json = r#"{"format":"airlock-bundle/2","whatever":1}"#;
        match Manifest::from_json(json.as_bytes()) {
            Err(ManifestError::UnknownFormat(v)) => assert_eq!(v, "airlock-bundle/2"),
            other => panic!("{other:?}"),
        }
    }

    fn migration(path: &str, info: MigrationInfo) -> FileEntry {
        FileEntry {
            path: BundlePath::parse(path).unwrap(),
            role: Role::Migration,
            size: 1,
            mode: 0o644,
            sha256: Sha256Digest::of(b"x"),
            name: None,
            install_path: None,
            migration: Some(info),
        }
    }

    fn info(tool: Option<MigrationTool>, version: &str, description: &str) -> MigrationInfo {
        MigrationInfo {
            database: "main".into(),
            tool,
            version: version.into(),
            order: None,
            description: description.into(),
            direction: Direction::Up,
            transaction: true,
            checksum: None,
            foreign_keys: None,
            history_table: None,
        }
    }

    #[test]
    fn migrations_read_by_their_tool_and_airlock_0_1_layouts_inferred() {
        let mut m = sample();
        // airlock 0.1 wrote the version as the name spelled it, with `order`.
        let mut legacy = info(None, "2024-03-13", "170000_sso");
        legacy.order = Some(20240313);
        m.files.push(migration(
            "migrations/main/2024-03-06-170000_add/up.sql",
            info(None, "2024-03-06-170000", "add"),
        ));
        m.files.push(migration(
            "migrations/main/2024-03-13_170000_sso/up.sql",
            legacy,
        ));
        m.files.push(migration(
            "migrations/main/2024-06-05-131359_later/up.sql",
            info(None, "2024-06-05-131359", "later"),
        ));
        m.files.sort_by(|a, b| a.path.cmp(&b.path));
        m.payload.unpacked_size = 6;
        m.validate().unwrap();
        let order: Vec<String> = m
            .migrations("main")
            .unwrap()
            .iter()
            .map(|x| format!("{} {}", x.tool, x.version))
            .collect();
        assert_eq!(
            order,
            [
                "diesel 20240306170000",
                "diesel 20240313",
                "diesel 20240605131359"
            ]
        );

        // A tool's manifest must state what the tool reads from the name.
        let mut m = sample();
        let mut sqlx = info(Some(MigrationTool::Sqlx), "1", "add orders");
        sqlx.checksum = Some("0".repeat(96));
        m.files.push(migration(
            "migrations/main/0001_add_orders.sql",
            sqlx.clone(),
        ));
        m.payload.unpacked_size = 4;
        m.validate().unwrap();
        let mut wrong = sqlx.clone();
        wrong.version = "0001".into();
        m.files[1] = migration("migrations/main/0001_add_orders.sql", wrong);
        let err = m.validate().unwrap_err().to_string();
        assert!(err.contains("not as the manifest states"), "{err}");
        let mut no_checksum = sqlx.clone();
        no_checksum.checksum = None;
        m.files[1] = migration("migrations/main/0001_add_orders.sql", no_checksum);
        assert!(m.validate().is_err());
        let mut golang = info(Some(MigrationTool::GolangMigrate), "1", "add_orders");
        golang.history_table = Some("x; DROP TABLE users".into());
        m.files[1] = migration("migrations/main/0001_add_orders.up.sql", golang.clone());
        let err = m.validate().unwrap_err().to_string();
        assert!(err.contains("not a plain SQL name"), "{err}");
        golang.history_table = Some("app_schema_migrations".into());
        golang.transaction = false;
        m.files[1] = migration("migrations/main/0001_add_orders.up.sql", golang);
        m.validate().unwrap();
        let read = m.migrations("main").unwrap();
        assert_eq!(read[0].history_table, "app_schema_migrations");
        assert!(!read[0].foreign_keys);
        assert!(!read[0].transaction);
        m.files[1] = migration("migrations/other/0001_add_orders.sql", sqlx);
        let err = m.validate().unwrap_err().to_string();
        assert!(err.contains("stored below `migrations/main/`"), "{err}");
    }

    #[test]
    fn rules_are_enforced() {
        let mut m = sample();
        m.files[0].mode = 0o4755;
        assert!(m.validate().is_err());
        let mut m = sample();
        m.payload.chunks.clear();
        assert!(m.validate().is_err());
        let mut m = sample();
        m.files[0].install_path = Some("opt/demo".into());
        assert!(m.validate().is_err());
        let mut m = sample();
        m.files.push(m.files[0].clone());
        assert!(m.validate().is_err());
        let mut m = sample();
        m.hooks.pre_stop = Some(BundlePath::parse("bin/demo").unwrap());
        assert!(m.validate().is_err());
        let mut m = sample();
        m.name = "../x".into();
        assert!(m.validate().is_err());
    }
}
