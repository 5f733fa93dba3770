//! `airlock-build build`: reads a spec and its sources once, hashing and
//! compressing in the same pass, and writes a signed, reproducible bundle.

use fs_err::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use airlock_formats::durable::write_atomic;
use airlock_formats::manifest::{validate_install_path, validate_name, DEFAULT_CHUNK_SIZE};
use airlock_formats::{
    bundle_head, bundle_tail, BundlePath, Direction, FileEntry, Hooks, Manifest, MigrationInfo,
    MigrationTool, PayloadWriter, Role, SecretKey, Tree, FORMAT_MARKER,
};
use indicatif::{ProgressBar, ProgressStyle};
use semver::{Version, VersionReq};
use std::collections::BTreeMap;

use crate::error::BuildError;
use crate::migrations;
use crate::spec::Spec;

/// How to write a [`Prepared`] bundle.
pub struct BuildOptions<'a> {
    /// The release key that signs the bundle; `None` writes it with no
    /// signature (`build --unsigned`), for `airlock-build sign` elsewhere.
    pub key: Option<&'a SecretKey>,
    /// Folder the bundle is written to.
    pub out_dir: &'a Path,
    /// zstd level, 1..=22 (default 3).
    pub level: i32,
    /// Build time in Unix seconds (`SOURCE_DATE_EPOCH`); `None` means now.
    pub source_date_epoch: Option<u64>,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// What a build produced.
#[derive(Debug)]
pub struct BuildReport {
    /// The bundle file.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Size of the bundle file, in bytes.
    pub size: u64,
    /// SHA-256 of the bundle file, for comparing copies at both ends.
    pub sha256: airlock_formats::Sha256Digest,
    /// Each `[[migrations]]` folder as its tool read it.
    pub migrations: Vec<MigrationsSummary>,
}

/// One `[[migrations]]` folder as its tool read it: what `build` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationsSummary {
    /// Database name.
    pub database: String,
    /// The folder.
    pub dir: PathBuf,
    /// `diesel`, `sqlx` or `golang-migrate`; `None` when it holds no migrations.
    pub tool: Option<MigrationTool>,
    /// `declared`, or what the layout showed (`detected: ...`).
    pub chosen_by: String,
    /// Up migrations bundled.
    pub up: usize,
    /// Down migrations bundled (never run by apply).
    pub down: usize,
    /// Entries the tool skips, as it would.
    pub ignored: Vec<PathBuf>,
}

impl MigrationsSummary {
    /// One line for a person: `migrations main (migrations): sqlx, detected: ...; 2 up, 0 down`.
    pub fn line(&self) -> String {
        let mut line = format!(
            "migrations {} ({}): {}, {}; {} up, {} down",
            self.database,
            self.dir.display(),
            self.tool.map_or("none", MigrationTool::name),
            self.chosen_by,
            self.up,
            self.down
        );
        if !self.ignored.is_empty() {
            let names: Vec<String> = self
                .ignored
                .iter()
                .map(|p| {
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            line.push_str(&format!(
                "; skipped as the tool skips them: {}",
                names.join(", ")
            ));
        }
        line
    }
}

/// What `airlock-build build --json` prints (docs/JSON.md, "build").
#[derive(Debug, serde::Serialize)]
pub struct BuildSummary {
    /// The bundle file.
    pub bundle: PathBuf,
    /// Bundle name.
    pub name: String,
    /// Bundle version.
    pub version: String,
    /// Size of the bundle file, in bytes.
    pub size: u64,
    /// SHA-256 of the bundle file.
    pub sha256: String,
    /// Size of the payload unpacked, in bytes.
    pub unpacked_size: u64,
    /// Number of payload files.
    pub files: usize,
    /// The signing key's id; `None` for an unsigned bundle (`--unsigned`).
    pub key_id: Option<String>,
    /// The build time, Unix seconds (`SOURCE_DATE_EPOCH`, else now).
    pub created_at: u64,
    /// `created_at` as RFC 3339.
    pub created_at_rfc3339: String,
    /// When sites refuse the bundle, Unix seconds; `None` (JSON `null`) without
    /// `expires_after_days`.
    pub expires_at: Option<u64>,
    /// `expires_at` as RFC 3339.
    pub expires_at_rfc3339: Option<String>,
    /// How long the build took, in seconds.
    pub seconds: f64,
    /// Each `[[migrations]]` folder as its tool read it.
    pub migrations: Vec<MigrationsSummary>,
}

impl BuildReport {
    /// The summary `build --json` prints; `key_id` signed it (none when
    /// unsigned) in `seconds`.
    pub fn summary(&self, key_id: Option<String>, seconds: f64) -> BuildSummary {
        let m = &self.manifest;
        BuildSummary {
            bundle: self.path.clone(),
            name: m.name.clone(),
            version: m.version.to_string(),
            size: self.size,
            sha256: self.sha256.to_hex(),
            unpacked_size: m.payload.unpacked_size,
            files: m.files.len(),
            key_id,
            created_at: m.created_at,
            created_at_rfc3339: airlock_formats::time::rfc3339(m.created_at),
            expires_at: m.expires_at,
            expires_at_rfc3339: m.expires_at.map(airlock_formats::time::rfc3339),
            seconds,
            migrations: self.migrations.clone(),
        }
    }
}

/// One file to put in the payload.
#[derive(Debug)]
struct Planned {
    source: PathBuf,
    path: BundlePath,
    role: Role,
    mode: u32,
    name: Option<String>,
    install_path: Option<String>,
    migration: Option<MigrationInfo>,
}

/// The current platform as bundles name it, `OS-ARCH` (e.g. `linux-x86_64`).
pub fn this_platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bundle_path(s: String) -> Result<BundlePath, BuildError> {
    BundlePath::parse(&s).map_err(|e| BuildError::Invalid(e.to_string()))
}

/// What [`plan`] found: the payload files, the trees and each migrations folder.
type Plan = (Vec<Planned>, Vec<Tree>, Vec<MigrationsSummary>);

fn plan(spec: &Spec, base: &Path) -> Result<Plan, BuildError> {
    let invalid = BuildError::Invalid;
    let mut planned = Vec::new();
    let mut summaries = Vec::new();
    for b in &spec.binaries {
        validate_name(&b.name).map_err(|r| invalid(format!("binary name: {r}")))?;
        validate_install_path(&b.install_path)
            .map_err(|r| invalid(format!("binary `{}`: {r}", b.name)))?;
        planned.push(Planned {
            source: base.join(&b.source),
            path: bundle_path(format!("bin/{}", b.name))?,
            role: Role::Binary,
            mode: b.mode,
            name: Some(b.name.clone()),
            install_path: Some(b.install_path.clone()),
            migration: None,
        });
    }
    let mut tools: BTreeMap<&str, MigrationTool> = BTreeMap::new();
    for m in &spec.migrations {
        validate_name(&m.database).map_err(|r| invalid(format!("migrations database: {r}")))?;
        let dir = base.join(&m.dir);
        let mut ignored_chars = Vec::new();
        for text in &m.ignored_chars {
            let mut chars = text.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => ignored_chars.push(c),
                _ => {
                    return Err(BuildError::Migration {
                        path: dir,
                        reason: format!(
                            "ignored_chars holds `{}`, which is not one character",
                            text.escape_default()
                        ),
                    })
                }
            }
        }
        let setup = migrations::ToolSetup {
            ignored_chars,
            tx_wrap: m.tx_wrap,
        };
        let found = migrations::discover(&dir, m.tool, &setup)?;
        if let (Some(tool), Some(table)) = (found.tool, &m.history_table) {
            if !tool.history_table_configurable() {
                return Err(BuildError::Migration {
                    path: dir,
                    reason: format!(
                        "history_table is not a {tool} setting: {tool} always records in {}",
                        tool.history_table()
                    ),
                });
            }
            if !airlock_formats::migration::valid_history_table(table) {
                return Err(BuildError::Migration {
                    path: dir,
                    reason: format!("history_table `{}` is not a plain SQL name (letters, digits, `_`; not airlock_migrations)", table.escape_default()),
                });
            }
        }
        if let Some(tool) = found.tool {
            if let Some(other) = tools.insert(&m.database, tool) {
                if other != tool {
                    return Err(BuildError::Migration {
                        path: dir,
                        reason: format!(
                            "is read as {tool}, but another folder of database `{}` is {other}; one service has one migrator",
                            m.database
                        ),
                    });
                }
            }
        }
        let count = |d| found.migrations.iter().filter(|f| f.direction == d).count();
        summaries.push(MigrationsSummary {
            database: m.database.clone(),
            dir: m.dir.clone(),
            tool: found.tool,
            chosen_by: found.chosen_by.clone(),
            up: count(Direction::Up),
            down: count(Direction::Down),
            ignored: found.ignored.clone(),
        });
        for f in found.migrations {
            planned.push(Planned {
                path: bundle_path(format!("migrations/{}/{}", m.database, f.relative))?,
                source: f.source,
                role: Role::Migration,
                mode: 0o644,
                name: None,
                install_path: None,
                migration: Some(MigrationInfo {
                    database: m.database.clone(),
                    tool: found.tool,
                    version: f.version.to_string(),
                    order: None,
                    description: f.description,
                    direction: f.direction,
                    transaction: f.transaction,
                    checksum: f.checksum,
                    foreign_keys: m.foreign_keys,
                    history_table: m.history_table.clone(),
                }),
            });
        }
    }
    let mut trees = Vec::new();
    for t in &spec.trees {
        let (tree, files) = crate::trees::read_tree(t, base)?;
        for f in files {
            planned.push(Planned {
                source: f.source,
                path: bundle_path(format!("trees/{}/{}", tree.name, f.relative))?,
                role: Role::Tree,
                mode: f.mode,
                name: None,
                install_path: None,
                migration: None,
            });
        }
        trees.push(tree);
    }
    trees.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = trees.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(invalid(format!(
            "two trees are named `{}`; give one a `name`",
            pair[0].name
        )));
    }
    if spec.hooks.pre_start_on_interrupt.is_some() && spec.hooks.pre_start.is_none() {
        return Err(invalid(
            "hooks: pre_start_on_interrupt is set, but there is no pre_start hook".into(),
        ));
    }
    for (hook, source) in [
        ("pre_stop", &spec.hooks.pre_stop),
        ("pre_start", &spec.hooks.pre_start),
        ("post_start", &spec.hooks.post_start),
    ] {
        if let Some(source) = source {
            let file_name = source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| {
                    invalid(format!(
                        "hook {hook}: `{}` has no file name",
                        source.display()
                    ))
                })?;
            planned.push(Planned {
                source: base.join(source),
                path: bundle_path(format!("hooks/{hook}/{file_name}"))?,
                role: Role::Script,
                mode: 0o755,
                name: None,
                install_path: None,
                migration: None,
            });
        }
    }
    for f in &spec.files {
        validate_install_path(&f.install_path).map_err(|r| invalid(format!("file: {r}")))?;
        let file_name = f
            .source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| invalid(format!("file `{}` has no file name", f.source.display())))?;
        planned.push(Planned {
            source: base.join(&f.source),
            path: bundle_path(format!("files/{file_name}"))?,
            role: Role::File,
            mode: f.mode,
            name: None,
            install_path: Some(f.install_path.clone()),
            migration: None,
        });
    }
    planned.sort_by(|a, b| a.path.cmp(&b.path));
    for pair in planned.windows(2) {
        if pair[0].path == pair[1].path {
            return Err(invalid(format!(
                "`{}` and `{}` would both be stored as `{}`; rename one",
                pair[0].source.display(),
                pair[1].source.display(),
                pair[0].path
            )));
        }
    }
    Ok((planned, trees, summaries))
}

/// A spec read and checked, every source found: what [`prepare`] returns
/// and [`build`] turns into a bundle. Holding one means the
/// build can fail only on I/O while writing, so the release key (and its
/// passphrase) is asked for after it.
#[derive(Debug)]
pub struct Prepared {
    spec: Spec,
    version: Version,
    upgrades_from: VersionReq,
    min_applier_version: Version,
    planned: Vec<Planned>,
    sizes: Vec<u64>,
    trees: Vec<Tree>,
    migrations: Vec<MigrationsSummary>,
    trust_update: Option<Vec<u8>>,
}

impl Prepared {
    /// The bundle's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The bundle's version.
    pub fn version(&self) -> &Version {
        &self.version
    }
}

/// Reads and checks the spec at `spec` and everything it names, without
/// writing anything or needing a key: the spec's fields, the migrations
/// folders as their tools read them, the trees, the trust update, and that
/// every source file exists.
///
/// # Errors
/// [`BuildError`] naming the spec field or source file at fault: a missing
/// source, duplicate migration versions, a version that is not SemVer, an
/// install path that is not absolute.
pub fn prepare(spec_path: &Path) -> Result<Prepared, BuildError> {
    let spec = Spec::load(spec_path)?;
    let version = Version::parse(&spec.version).map_err(|e| {
        BuildError::Invalid(format!(
            "version `{}` is not SemVer 2.0.0 (e.g. 1.2.3): {e}",
            spec.version
        ))
    })?;
    let upgrades_from = VersionReq::parse(&spec.upgrades_from).map_err(|e| {
        BuildError::Invalid(format!(
            "upgrades_from `{}` is not a SemVer requirement: {e}",
            spec.upgrades_from
        ))
    })?;
    let min_applier_version = match &spec.min_applier_version {
        Some(v) => Version::parse(v).map_err(|e| {
            BuildError::Invalid(format!("min_applier_version `{v}` is not SemVer: {e}"))
        })?,
        None => Version::parse(airlock_formats::VERSION)
            .map_err(|e| BuildError::Invalid(format!("airlock's own version: {e}")))?,
    };
    validate_name(&spec.name).map_err(|r| BuildError::Invalid(format!("name: {r}")))?;
    let base = airlock_formats::durable::parent_of(spec_path);
    let (planned, trees, migrations) = plan(&spec, base)?;
    let trust_update = match &spec.trust_update {
        None => None,
        Some(path) => {
            let path = base.join(path);
            let bytes = fs_err::read(&path).map_err(|source| BuildError::Source {
                path: path.clone(),
                source,
            })?;
            let (update, document) =
                airlock_formats::TrustUpdate::from_json(&bytes).map_err(|e| {
                    BuildError::Invalid(format!("trust_update `{}`: {e}", path.display()))
                })?;
            if update.signatures.is_empty() {
                return Err(BuildError::Invalid(format!(
                    "trust_update `{}` (trust version {}) is not signed: sign it with `airlock-build trust sign` first",
                    path.display(),
                    document.version
                )));
            }
            Some(bytes)
        }
    };
    // Migration tools, trees and the pre_start hook entered the manifest in
    // 0.2.0 (docs/FORMAT.md); an older applier cannot read them.
    let tools_from = Version::new(0, 2, 0);
    let needs_new = planned.iter().any(|p| p.migration.is_some())
        || !trees.is_empty()
        || spec.hooks.pre_start.is_some();
    if needs_new && min_applier_version < tools_from {
        return Err(BuildError::Invalid(format!(
            "min_applier_version {min_applier_version} is too low: bundles with migrations, trees or a pre_start hook need airlock-apply {tools_from} or newer, which reads them"
        )));
    }

    // Stat every source before writing anything, so a missing one fails fast.
    let mut sizes = Vec::with_capacity(planned.len());
    for p in &planned {
        // BuildError::Source names the file; fs-err would name it twice.
        #[allow(clippy::disallowed_methods)]
        let meta = std::fs::metadata(&p.source).map_err(|source| BuildError::Source {
            path: p.source.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(BuildError::Source {
                path: p.source.clone(),
                source: std::io::Error::other("not a regular file"),
            });
        }
        sizes.push(meta.len());
    }
    Ok(Prepared {
        spec,
        version,
        upgrades_from,
        min_applier_version,
        planned,
        sizes,
        trees,
        migrations,
        trust_update,
    })
}

/// Writes the prepared bundle as `OUT_DIR/NAME-VERSION.airlock`, signed by
/// `opts.key` (or unsigned), replacing the file atomically.
///
/// # Errors
/// [`BuildError`]: an I/O error naming the file, a source that changed
/// since [`prepare`].
pub fn build(prepared: Prepared, opts: &BuildOptions<'_>) -> Result<BuildReport, BuildError> {
    let Prepared {
        spec,
        version,
        upgrades_from,
        min_applier_version,
        planned,
        sizes,
        trees,
        migrations: migration_summaries,
        trust_update,
    } = prepared;
    let created_at = opts.source_date_epoch.unwrap_or_else(now);
    fs_err::create_dir_all(opts.out_dir).map_err(|source| BuildError::Io {
        context: "creating the output folder".into(),
        source,
    })?;
    let temp = tempfile::Builder::new()
        .prefix(".payload-")
        .tempfile_in(opts.out_dir)
        .map_err(|source| BuildError::Io {
            context: format!(
                "creating a temporary payload file in `{}`",
                opts.out_dir.display()
            ),
            source,
        })?;
    // At least one worker: zstd's multi-threaded output does not depend on the
    // number of workers, so builds stay byte-identical across machines.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get() as u32)
        .max(1);
    let mut writer = PayloadWriter::new(
        BufWriter::with_capacity(
            1 << 20,
            temp.reopen().map_err(|source| BuildError::Io {
                context: "opening the temporary payload".into(),
                source,
            })?,
        ),
        opts.level,
        workers,
        DEFAULT_CHUNK_SIZE,
        created_at,
    )?;

    let total: u64 = sizes.iter().sum();
    let bar = if opts.progress {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );

    let mut files = Vec::with_capacity(planned.len());
    for (p, size) in planned.into_iter().zip(sizes) {
        bar.set_message(p.path.to_string());
        let source = File::open(&p.source).map_err(|source| BuildError::Source {
            path: p.source.clone(),
            source,
        })?;
        let sha256 = writer.append(&p.path, p.mode, size, bar.wrap_read(source))?;
        files.push(FileEntry {
            path: p.path,
            role: p.role,
            size,
            mode: p.mode,
            sha256,
            name: p.name,
            install_path: p.install_path,
            migration: p.migration,
        });
    }
    let (payload_out, payload) = writer.finish()?;
    let mut payload_file = payload_out.into_inner().map_err(|e| BuildError::Io {
        context: "writing the temporary payload".into(),
        source: e.into_error(),
    })?;
    payload_file.flush().map_err(|source| BuildError::Io {
        context: "writing the temporary payload".into(),
        source,
    })?;
    bar.finish_and_clear();

    let hook_path =
        |hook: &str, source: &Option<PathBuf>| -> Result<Option<BundlePath>, BuildError> {
            source
                .as_ref()
                .and_then(|s| s.file_name())
                .map(|n| bundle_path(format!("hooks/{hook}/{}", n.to_string_lossy())))
                .transpose()
        };
    let manifest = Manifest {
        format: FORMAT_MARKER.into(),
        name: spec.name.clone(),
        version,
        platform: spec.platform.clone().unwrap_or_else(this_platform),
        upgrades_from,
        min_applier_version,
        rolling_allowed: spec.rolling_allowed,
        created_at,
        expires_at: spec.expires_after_days.map(|d| created_at + d * 86_400),
        hooks: Hooks {
            pre_stop: hook_path("pre_stop", &spec.hooks.pre_stop)?,
            pre_start: hook_path("pre_start", &spec.hooks.pre_start)?,
            pre_start_on_interrupt: spec.hooks.pre_start_on_interrupt,
            post_start: hook_path("post_start", &spec.hooks.post_start)?,
        },
        trees,
        files,
        payload,
    };
    let manifest_bytes = manifest.to_json()?;
    let file_name = manifest.file_name();
    let signatures: Vec<_> = opts
        .key
        .map(|key| {
            key.sign(
                &manifest_bytes,
                &format!("timestamp:{created_at}\tfile:{file_name}"),
            )
        })
        .into_iter()
        .collect();

    let out = opts.out_dir.join(&file_name);
    let head = bundle_head(
        &manifest_bytes,
        trust_update.as_deref(),
        &signatures,
        manifest.payload.size,
        created_at,
    )?;
    let mut sha256 = None;
    write_atomic(&out, 0o644, |f| {
        sha256 = Some(copy_into_bundle(
            &head,
            &payload_file,
            manifest.payload.size,
            f,
            WRITEBACK_EVERY,
        )?);
        Ok(())
    })?;
    let size = fs_err::metadata(&out).map(|m| m.len()).unwrap_or(0);
    Ok(BuildReport {
        path: out,
        manifest,
        size,
        sha256: sha256.unwrap_or(airlock_formats::Sha256Digest([0; 32])),
        migrations: migration_summaries,
    })
}

/// Bytes of the payload copied between two writeback requests (64 MiB).
const WRITEBACK_EVERY: u64 = 64 << 20;

/// Writes the bundle into `out`: `head`, the `size` bytes of the compressed
/// `payload` (read from its offset 0), then [`bundle_tail`]. Returns the
/// SHA-256 of everything written.
///
/// The payload goes from file to file inside the kernel (`std::io::copy`
/// between two files uses `copy_file_range(2)` on Linux); a thread hashes
/// the same bytes with positioned reads of `payload` meanwhile, and another
/// writes back what is copied every `writeback_every` bytes ([`WRITEBACK_EVERY`] in builds;
/// `fdatasync(2)`), so the caller's final fsync finds little left to write.
///
/// # Errors
/// The first read, write or sync error; `payload` shorter than `size`.
fn copy_into_bundle(
    head: &[u8],
    payload: &std::fs::File,
    size: u64,
    out: &mut std::fs::File,
    writeback_every: u64,
) -> std::io::Result<airlock_formats::Sha256Digest> {
    use sha2::{Digest as _, Sha256};
    use std::io::Read as _;
    use std::os::unix::fs::FileExt as _;

    let tail = bundle_tail(size);
    out.write_all(head)?;
    let mut from = payload;
    from.seek(SeekFrom::Start(0))?;
    let out: &std::fs::File = out;
    let tail = &tail[..];
    std::thread::scope(|scope| {
        let hashing = scope.spawn(move || -> std::io::Result<_> {
            let mut hasher = Sha256::new();
            hasher.update(head);
            let mut buf = vec![0u8; 1 << 20];
            let mut offset = 0;
            while offset < size {
                let want = (size - offset).min(buf.len() as u64) as usize;
                payload.read_exact_at(&mut buf[..want], offset)?;
                hasher.update(&buf[..want]);
                offset += want as u64;
            }
            hasher.update(tail);
            Ok(airlock_formats::Sha256Digest(hasher.finalize().into()))
        });
        let (ask, asked) = std::sync::mpsc::sync_channel::<()>(1);
        let writeback = scope.spawn(move || -> std::io::Result<()> {
            for () in asked {
                out.sync_data()?;
            }
            Ok(())
        });
        let mut copied = 0;
        let copy = (|| {
            while copied < size {
                let piece = (size - copied).min(writeback_every.max(1));
                let n = std::io::copy(&mut from.take(piece), &mut &*out)?;
                if n < piece {
                    return Err(std::io::Error::other(format!(
                        "the temporary payload holds {} of its {size} bytes",
                        copied + n
                    )));
                }
                copied += n;
                // A sync already under way covers this piece too.
                let _ = ask.try_send(());
            }
            (&*out).write_all(tail)
        })();
        drop(ask);
        let synced = joined(writeback.join(), "writeback");
        let digest = joined(hashing.join(), "SHA-256");
        copy?;
        synced?;
        digest
    })
}

/// The result of a scoped thread: its own, or an error when it panicked.
fn joined<T>(result: std::thread::Result<std::io::Result<T>>, what: &str) -> std::io::Result<T> {
    result.map_err(|_| std::io::Error::other(format!("the {what} thread died")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_is_head_payload_tail_and_its_hash_covers_all_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let payload: Vec<u8> = (0..3_000_001u32).map(|i| (i % 253) as u8).collect();
        let mut temp = fs_err::File::create_new(dir.path().join("payload"))
            .unwrap()
            .into_file();
        temp.write_all(&payload).unwrap();
        let head = b"head bytes".to_vec();
        for every in [1 << 20, 64 << 20] {
            let path = dir.path().join(format!("bundle-{every}"));
            let mut out = fs_err::File::create_new(&path).unwrap().into_file();
            let sha =
                copy_into_bundle(&head, &temp, payload.len() as u64, &mut out, every).unwrap();
            let written = fs_err::read(&path).unwrap();
            let mut expected = head.clone();
            expected.extend_from_slice(&payload);
            expected.extend_from_slice(&bundle_tail(payload.len() as u64));
            assert_eq!(written, expected, "pieces of {every} bytes");
            assert_eq!(sha, airlock_formats::Sha256Digest::of(&expected));
        }
        // A temporary payload shorter than the manifest says is an error.
        let mut out = fs_err::File::create_new(dir.path().join("short"))
            .unwrap()
            .into_file();
        let e = copy_into_bundle(&head, &temp, payload.len() as u64 + 1, &mut out, 1 << 20)
            .unwrap_err();
        assert!(e.to_string().contains("holds"), "{e}");
    }
}
