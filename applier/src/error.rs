//! Errors of the applier, and the exit code each top-level error maps to
//! (docs/OPERATIONS.md, "Exit codes").
//!
//! Two levels: [`StepError`] is why one step, undo action or check on the
//! node failed, typed and with the file, database or command it is about
//! (an I/O error keeps its `io::ErrorKind`, so a permission problem can be
//! told from a full disk or a damaged backup copy). [`ApplyError`] is how a
//! command ended for the operator, and decides the exit code.

use std::io;
use std::path::PathBuf;

use airlock_formats::durable::DurableError;
use airlock_formats::{BundleError, ManifestError, MigrationTool};
use semver::Version;
use thiserror::Error;

use crate::state::StateError;
use crate::steps::service::CommandOutput;

/// Exit codes of `airlock-apply` (documented in docs/OPERATIONS.md, "Exit codes").
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Failed before anything changed (site profile, I/O, preflight).
    pub const FAILED: u8 = 1;
    /// The command line is wrong (clap's usage error).
    pub const USAGE: u8 = 2;
    /// The bundle was refused by verification; nothing changed.
    pub const REFUSED: u8 = 3;
    /// Apply failed and was rolled back; the old version runs, healthy.
    pub const ROLLED_BACK: u8 = 4;
    /// Apply failed and rollback did not complete: the operator must act.
    pub const NEEDS_OPERATOR: u8 = 5;
    /// Another apply holds the lock.
    pub const BUSY: u8 = 6;
    /// An interrupted apply must be resumed first.
    pub const INTERRUPTED: u8 = 7;
    /// `history --check` or `backups verify` found damage.
    pub const CHECK_FAILED: u8 = 8;
}

/// Why a step, an undo action or a check on the node failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StepError {
    /// A filesystem call failed. The message names the path (fs-err adds it);
    /// [`StepError::io_kind`] tells a missing file from a permission problem
    /// or a full disk.
    #[error("{}", io_message(.0))]
    Io(#[from] io::Error),
    /// A crash-safe write failed (it names the file).
    #[error("{}", durable_message(.0))]
    Durable(#[from] DurableError),
    /// An SQLite call on one of the site's databases (or a backup copy) failed.
    #[error("{what} `{path}`: {source}")]
    Sqlite {
        /// What was being done, naming the database.
        what: String,
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// `PRAGMA integrity_check` found problems in a fresh backup copy.
    #[error("backup of database `{name}` at `{path}` failed its check: {problems}")]
    IntegrityCheck {
        /// Database name in the site profile.
        name: String,
        /// The backup copy.
        path: PathBuf,
        /// What SQLite reported, `; `-separated.
        problems: String,
    },
    /// A backup copy no longer has the SHA-256 recorded when it was made.
    #[error("backup copy `{path}` does not match its recorded SHA-256")]
    BackupDamaged {
        /// The copy.
        path: PathBuf,
    },
    /// `backup.json` cannot be parsed.
    #[error("backup manifest `{path}`: {source}")]
    BackupManifest {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A folder to back up holds something other than files and folders.
    #[error("`{path}` is a link or special file; airlock backs up regular files only")]
    NotRegular {
        /// The entry.
        path: PathBuf,
    },
    /// A site command or hook could not be started.
    #[error("cannot run the {what} command `{command}`: {source}")]
    Spawn {
        /// `stop`, `start`, `pre_stop hook`, ...
        what: String,
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A site command or hook failed or timed out; the message has its exit
    /// status and the last lines of its output.
    #[error("{}", .output.describe(&format!("the {what} command `{command}`")))]
    Command {
        /// `stop`, `start`, `pre_stop hook`, ...
        what: String,
        /// The command line.
        command: String,
        /// How it ended.
        output: Box<CommandOutput>,
    },
    /// The service still passes its health check after the stop command.
    #[error("service `{service}` still passes its health check {secs}s after the stop command")]
    StillRunning {
        /// Service name.
        service: String,
        /// `stop_wait_secs`.
        secs: u64,
    },
    /// A process still holds a lock on a database after the service stopped.
    #[error("database `{name}` (`{}`) is still in use {secs}s after the stop command: a process of the service may still be shutting down, or another program holds it open in a transaction; nothing was backed up", .path.display())]
    DatabaseInUse {
        /// Database name in the site profile.
        name: String,
        /// The database file.
        path: PathBuf,
        /// `stop_wait_secs`.
        secs: u64,
    },
    /// The service did not pass its health check in time.
    #[error("service `{service}` did not become healthy within {secs}s: {output}")]
    Unhealthy {
        /// Service name.
        service: String,
        /// `health_wait_secs`.
        secs: u64,
        /// The last health check's output.
        output: String,
    },
    /// The service is healthy but reports another version.
    #[error("service `{service}` is healthy but reports version {found}, expected {expected}")]
    WrongVersion {
        /// Service name.
        service: String,
        /// What the version probe printed (a version, or its output in backticks).
        found: String,
        /// The version that should run.
        expected: Version,
    },
    /// SIGINT or SIGTERM arrived; no new step begins.
    #[error("interrupted by a signal (SIGINT or SIGTERM)")]
    Interrupted,
    /// `apply --wait-for-go` heard something other than `go` before the stop.
    #[error("the rolling upgrade's coordinator did not say go (it sent {heard}): the service was not stopped")]
    NoGo {
        /// What came instead, e.g. `` `stop` `` or `the end of its input`.
        heard: String,
    },
    /// The bundle migrates a database the site profile does not list.
    #[error("database `{database}` is not in site.toml")]
    UnknownDatabase {
        /// The database name.
        database: String,
    },
    /// A migration recorded in a database differs from the bundle's.
    #[error("database `{}` ({}) recorded {} migration {} `{}` with {digest} {recorded}, but the bundle's is {expected}", .migration.database, .migration.path.display(), .migration.tool, .migration.version, .migration.description)]
    MigrationChanged {
        /// The migration.
        migration: Box<MigrationRef>,
        /// Which record: `SHA-256 in airlock_migrations` or `SHA-384 checksum in _sqlx_migrations`.
        digest: String,
        /// What the database recorded, hex.
        recorded: String,
        /// What the signed manifest says, hex.
        expected: String,
    },
    /// The tool's history records a migration that failed half way: sqlx's
    /// `success = false` (its `Dirty` error) or golang-migrate's `dirty`.
    #[error("database `{database}` ({}): {tool} records migration {version} as failed half way ({table}), so {tool} itself would not run", .path.display())]
    MigrationDirty {
        /// Database name in the site profile.
        database: String,
        /// Database file.
        path: PathBuf,
        /// The tool.
        tool: MigrationTool,
        /// Its history table.
        table: String,
        /// The version recorded as dirty.
        version: String,
    },
    /// The tool's history records a version the bundle has no migration for
    /// (sqlx `VersionMissing`, golang-migrate "no migration found for version").
    #[error("database `{database}` ({}): {tool} records migration {version} in {table}, which this bundle does not have", .path.display())]
    MigrationMissing {
        /// Database name in the site profile.
        database: String,
        /// Database file.
        path: PathBuf,
        /// The tool.
        tool: MigrationTool,
        /// Its history table.
        table: String,
        /// The recorded version.
        version: String,
    },
    /// A migration's SQL failed; its transaction, if it had one, was rolled back.
    #[error("{} migration {} `{}` ({}) on database `{}` ({}): {source}", .migration.tool, .migration.version, .migration.description, .migration.file, .migration.database, .migration.path.display())]
    Migration {
        /// The migration.
        migration: Box<MigrationRef>,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// Raft data changed while a version that cannot mix ran: it is not
    /// restored (docs/OPERATIONS.md, "The Raft safety rule").
    #[error(
        "the Raft data in `{}` changed while {version} ran ({changed} file(s)) and this bundle does not allow mixed versions, so the old version may not read it; \
         airlock does not restore it, because a member that forgets acknowledged entries can break its cluster. \
         Safe procedure: remove this member from its cluster, clear its data directory and add it back so it copies the current data from the leader \
         (etcd: `etcdctl member remove`, then `member add`); for a single-member cluster, start {version} again or restore the cluster from a snapshot",
        .folder.display()
    )]
    RaftChanged {
        /// The live Raft folder.
        folder: PathBuf,
        /// The version that ran on it.
        version: Version,
        /// How many files differ from the backup.
        changed: usize,
    },
    /// Stopping the new version failed during a rollback, so nothing was
    /// restored under a running service.
    #[error(
        "stopping the new version failed, so nothing was restored (the backup is intact): {0}"
    )]
    NotStopped(Box<StepError>),
    /// Free space is short for staging or backups.
    #[error("{what} need {} MiB at `{}` (with a 5 % + 16 MiB margin) but only {} MiB are free; free space there or point paths.backup_dir / paths.staging_dir elsewhere", .needed >> 20, .dir.display(), .available >> 20)]
    NoSpace {
        /// `staging`, `backups` or `staging and backups`.
        what: &'static str,
        /// The folder.
        dir: PathBuf,
        /// Bytes needed with the margin.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// A step would change something this apply has not backed up (the
    /// safety invariant: every file and database a step touches was backed
    /// up first).
    #[error("`{}` is not in this apply's backup; airlock changes nothing it has not backed up", .path.display())]
    NotBackedUp {
        /// The file or database.
        path: PathBuf,
    },
    /// The apply's own records disagree (a stored step names a file the
    /// signed manifest does not list, ...); nothing more was changed.
    #[error("the apply's records disagree: {what}")]
    Inconsistent {
        /// What disagrees.
        what: String,
    },
    /// Reading or checking the bundle failed.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The applier's own state database failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Which migration of which database an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationRef {
    /// Database name in the site profile.
    pub database: String,
    /// Database file.
    pub path: PathBuf,
    /// The tool whose rules it follows.
    pub tool: MigrationTool,
    /// Migration version, as the tool records it.
    pub version: String,
    /// Migration description.
    pub description: String,
    /// Payload path of the migration file.
    pub file: String,
}

impl StepError {
    /// The `io::ErrorKind` when the cause is an I/O error.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Self::Io(e) | Self::Spawn { source: e, .. } => Some(e.kind()),
            Self::Durable(e) => Some(e.source.kind()),
            Self::NotStopped(e) => e.io_kind(),
            _ => None,
        }
    }
}

/// What separates a cause from what follows it: `; `, or a new line when the
/// cause ends with a command's output.
fn then(cause: &str) -> &'static str {
    if cause.contains('\n') {
        "\n"
    } else {
        "; "
    }
}

fn full_disk_hint(kind: io::ErrorKind) -> &'static str {
    if kind == io::ErrorKind::StorageFull {
        "; the filesystem is full (no space left on device): free space there or move paths.backup_dir"
    } else {
        ""
    }
}

fn io_message(e: &io::Error) -> String {
    format!("{e}{}", full_disk_hint(e.kind()))
}

fn durable_message(e: &DurableError) -> String {
    format!("{e}{}", full_disk_hint(e.source.kind()))
}

/// Why a bundle could not be verified: refused (nothing may use it) or not readable.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Security: the bundle is not acceptable here (signature, threshold,
    /// expiry, platform, version rule, tampering).
    #[error("bundle `{}` refused: {reason}", .bundle.display())]
    Refused {
        /// The bundle file.
        bundle: PathBuf,
        /// Why.
        reason: String,
        /// What to do next.
        help: String,
    },
    /// The bundle file cannot be read.
    #[error("reading bundle `{}`: {source}", .bundle.display())]
    Unreadable {
        /// The bundle file.
        bundle: PathBuf,
        /// The cause.
        #[source]
        source: BundleError,
    },
    /// The installed version cannot be found.
    #[error("finding the installed version: {0}")]
    Installed(String),
    /// The state database failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Why `rollback` refuses; nothing changed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RollbackRefusal {
    /// No apply completed on this node.
    #[error("no completed apply to roll back")]
    NothingToRollBack,
    /// The installed version is not what the last apply installed.
    #[error("the installed version is {installed}, not {version} which apply #{id} installed; it was rolled back already or replaced")]
    NotInstalled {
        /// What is installed.
        installed: String,
        /// What the last apply installed.
        version: String,
        /// That apply.
        id: i64,
    },
    /// The apply's backup cannot be read.
    #[error("the backup of apply #{id} is not usable: {cause}")]
    BackupUnusable {
        /// The apply.
        id: i64,
        /// Why.
        cause: Box<StepError>,
    },
    /// The apply's backup fails its re-hash.
    #[error("the backup `{}` is damaged: {}", .dir.display(), .problems.join("; "))]
    BackupDamaged {
        /// The backup folder.
        dir: PathBuf,
        /// What failed.
        problems: Vec<String>,
    },
    /// The stored manifest of the apply cannot be read.
    #[error("stored manifest of apply #{id}: {source}")]
    Manifest {
        /// The apply.
        id: i64,
        /// The parse error.
        source: ManifestError,
    },
    /// The apply was recorded without undo records (by an older airlock-apply).
    #[error("apply #{id} was recorded by an older airlock-apply, without undo records; restore it by hand from its backup `{backup}` (docs/OPERATIONS.md, \"Rollback did not complete\")")]
    NoUndoRecords {
        /// The apply.
        id: i64,
        /// Its backup folder.
        backup: String,
    },
    /// Restoring would break the Raft safety rule.
    #[error(transparent)]
    Raft(Box<StepError>),
    /// The operator did not confirm.
    #[error("not confirmed; nothing changed")]
    NotConfirmed,
}

/// Why a command of the applier failed; [`ApplyError::exit_code`] is its exit code.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The site profile cannot be used.
    #[error("site profile `{}`: {reason}", .path.display())]
    Site {
        /// The profile.
        path: PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// No site profile is where the command looked (docs/SITE.md, "Where
    /// the profile is").
    #[error("no site profile at `{}` ({})", .path.display(), .from.describe())]
    SiteMissing {
        /// Where it looked.
        path: PathBuf,
        /// Where that path came from.
        from: crate::site::ProfileFrom,
    },
    /// A node's site profile where a cluster profile is needed, or the
    /// reverse.
    #[error("{}", profile_kind_message(.path, *.expected))]
    ProfileKind {
        /// The profile.
        path: PathBuf,
        /// The kind the command needs.
        expected: crate::site::ProfileKind,
    },
    /// `extract` was asked for a file the bundle's manifest does not list.
    #[error("bundle `{}` has no file `{path}`", .bundle.display())]
    NotInBundle {
        /// The bundle.
        bundle: PathBuf,
        /// The path asked for, made safe to show.
        path: String,
    },
    /// The site profile cannot be read.
    #[error("site profile `{}`: {source}", .path.display())]
    SiteUnreadable {
        /// The profile.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Security: the bundle is not acceptable here (signature, threshold,
    /// expiry, platform, version rule, tampering). Nothing was changed.
    #[error("bundle `{}` refused: {reason}", .bundle.display())]
    Refused {
        /// The bundle file.
        bundle: PathBuf,
        /// Why.
        reason: String,
        /// What to do next.
        help: String,
    },
    /// Security: a trust update is not acceptable here (signatures,
    /// threshold, version, expiry). Nothing was changed.
    #[error("trust update `{}` refused: {reason}", .file.display())]
    TrustRefused {
        /// The trust update file.
        file: PathBuf,
        /// Why.
        reason: String,
        /// What to do next.
        help: String,
    },
    /// Another apply holds the node's lock.
    #[error("another airlock-apply ({holder}) is running: lock `{}` is held", .lock.display())]
    Busy {
        /// The lock file.
        lock: PathBuf,
        /// The holder's pid, as it wrote it.
        holder: String,
    },
    /// An earlier apply was interrupted and must be finished or undone first.
    #[error("apply #{id} ({from} -> {to}) was interrupted and is not finished")]
    Interrupted {
        /// The interrupted apply's id.
        id: i64,
        /// Its from version.
        from: String,
        /// Its to version.
        to: String,
    },
    /// A rolling upgrade stopped; every node is on one version or the other.
    #[error("rolling upgrade to {version} stopped {node}: {reason}")]
    RolloutStopped {
        /// Version being rolled out.
        version: String,
        /// Where it stopped: `at node NAME`, `before any node stopped`, ...
        node: String,
        /// Why.
        reason: String,
        /// Where that node stands.
        node_outcome: NodeOutcome,
    },
    /// A node's airlock-apply speaks another protocol version than this one.
    #[error("node {node} runs an airlock-apply that speaks protocol {}, this airlock-apply speaks {ours}: versions of airlock cannot be mixed between a coordinator and its nodes", .found.map_or_else(|| "without a version (an older airlock)".to_string(), |v| v.to_string()))]
    Protocol {
        /// The node.
        node: String,
        /// Its protocol version, if it sent one.
        found: Option<u32>,
        /// Ours ([`crate::protocol::PROTOCOL`]).
        ours: u32,
    },
    /// A rolling upgrade could not start: a check of the cluster failed,
    /// or an earlier rollout is unfinished. No node changed.
    #[error("{step} failed: {cause}")]
    ClusterCheck {
        /// The check.
        step: String,
        /// Why.
        cause: Box<crate::cluster::rolling::ClusterError>,
    },
    /// A check of stored data found damage (audit log, backups).
    #[error("{0}")]
    CheckFailed(String),
    /// A step failed before the service was stopped; nothing on the node changed.
    #[error("{step} failed: {cause}")]
    Preflight {
        /// The step, as reported.
        step: String,
        /// What failed.
        cause: Box<StepError>,
    },
    /// `rollback` refused; nothing changed.
    #[error("rollback failed: {0}")]
    RollbackRefused(RollbackRefusal),
    /// A step after the stop failed and the node was rolled back to the old version, healthy.
    #[error("apply of {version} failed at step `{step}`: {cause}{}rolled back to {old_version}, which is running and healthy", then(&cause.to_string()))]
    RolledBack {
        /// Version that failed.
        version: String,
        /// Version running now.
        old_version: String,
        /// Step that failed.
        step: String,
        /// What failed.
        cause: Box<StepError>,
    },
    /// A step failed and so did the rollback: the operator must act.
    #[error("apply of {version} failed at step `{step}`: {reason}{}rollback did not complete: {rollback}", then(reason))]
    NeedsOperator {
        /// Version that failed.
        version: String,
        /// Step that failed.
        step: String,
        /// What failed.
        reason: String,
        /// What failed during rollback, or why it was not attempted.
        rollback: String,
    },
    /// The bundle could not be read, or the installed version not found.
    #[error(transparent)]
    Verify(VerifyError),
    /// The state database failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A durable write failed.
    #[error(transparent)]
    Durable(#[from] DurableError),
    /// Other I/O, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Where the node a rollout stopped at stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeOutcome {
    /// Nothing on it changed (a check failed before its apply, or its apply refused to begin).
    Unchanged,
    /// Its apply failed and it rolled itself back: the old version runs, healthy.
    RolledBack,
    /// It needs the operator: its rollback did not complete, or its state is unknown.
    NeedsOperator,
}

impl From<VerifyError> for ApplyError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Refused {
                bundle,
                reason,
                help,
            } => Self::Refused {
                bundle,
                reason,
                help,
            },
            VerifyError::State(e) => Self::State(e),
            other => Self::Verify(other),
        }
    }
}

impl ApplyError {
    /// The exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Refused { .. } | Self::TrustRefused { .. } => exit::REFUSED,
            Self::RolledBack { .. } => exit::ROLLED_BACK,
            Self::NeedsOperator { .. } => exit::NEEDS_OPERATOR,
            Self::Busy { .. } => exit::BUSY,
            Self::Interrupted { .. } => exit::INTERRUPTED,
            Self::CheckFailed(_) => exit::CHECK_FAILED,
            Self::RolloutStopped { node_outcome, .. } => match node_outcome {
                NodeOutcome::Unchanged => exit::FAILED,
                NodeOutcome::RolledBack => exit::ROLLED_BACK,
                NodeOutcome::NeedsOperator => exit::NEEDS_OPERATOR,
            },
            _ => exit::FAILED,
        }
    }

    /// What the operator should do next, when there is more to say than the message.
    pub fn help(&self) -> Option<String> {
        match self {
            Self::Refused { help, .. } | Self::TrustRefused { help, .. } => Some(help.clone()),
            Self::Busy { .. } => Some(
                "wait for it to finish: `airlock-apply status` (a node) or `airlock-apply rollout status` (a cluster) shows it".into(),
            ),
            Self::RolloutStopped { node, .. } => Some(format!(
                "fix the cause (the rollout stopped {node}), then run `airlock-apply resume --site CLUSTER.toml` to continue, or `airlock-apply rollout abandon --site CLUSTER.toml` to give this rollout up; `airlock-apply rollout status --site CLUSTER.toml` shows every node"
            )),
            Self::Protocol { .. } => Some(
                "nothing changed; install the same airlock-apply release on the coordinator and on every node (`airlock-apply --version` shows it), then continue with `airlock-apply resume --site CLUSTER.toml`".into(),
            ),
            Self::Interrupted { .. } => Some(
                "run `airlock-apply resume --site SITE`: it rolls the apply back, or completes it if the new version was already healthy".into(),
            ),
            Self::RolledBack { .. } => Some(
                "the node runs the old version; read the failure above, fix the bundle or the site, and apply again".into(),
            ),
            Self::NeedsOperator { .. } => Some(
                "the node needs you: the error says what is running and what is not; docs/OPERATIONS.md, \"Rollback did not complete\", has the procedure, and `airlock-apply status` lists the backups".into(),
            ),
            Self::Site { .. } => Some("fix the field named above; docs/SITE.md describes every field".into()),
            Self::SiteUnreadable { .. } => Some(
                "check the path given with --site and that this user may read it".into(),
            ),
            Self::NotInBundle { bundle, .. } => Some(format!(
                "nothing was written; `airlock-apply inspect {} --files` lists the paths it holds",
                bundle.display()
            )),
            Self::SiteMissing { .. } => Some(format!(
                "pass the profile with --site PATH, or set {}=PATH; a node's profile usually lives at {} (docs/SITE.md)",
                crate::site::SITE_ENV,
                crate::site::DEFAULT_SITE
            )),
            Self::ProfileKind { path, expected } => Some(match expected {
                crate::site::ProfileKind::Node => format!(
                    "pass the node's own site profile (the `site` of its [[cluster.node]]); for the whole cluster, `airlock-apply rollout status --site {}`",
                    path.display()
                ),
                crate::site::ProfileKind::Cluster => format!(
                    "pass the coordinator's cluster profile (docs/SITE.md, \"Cluster profile\"); for this node alone, `airlock-apply status --site {}`",
                    path.display()
                ),
            }),
            Self::ClusterCheck { .. } => Some(
                "no node changed; fix the cause above (`airlock-apply rollout status --site CLUSTER.toml` shows the last rollout), then run again".into(),
            ),
            Self::Preflight { cause, .. } if matches!(**cause, StepError::NoSpace { .. }) => Some(
                "free space there, or point paths.backup_dir / paths.staging_dir at a larger filesystem; `airlock-apply plan` shows what each needs".into(),
            ),
            Self::Preflight { .. } => Some("nothing on the node changed; fix the cause above and apply again".into()),
            Self::RollbackRefused(RollbackRefusal::NotConfirmed) => None,
            Self::RollbackRefused(_) => Some(
                "nothing changed; `airlock-apply status` shows the applies and backups, docs/OPERATIONS.md (\"Undo a completed apply\") what rollback needs".into(),
            ),
            Self::CheckFailed(_) => Some(
                "docs/OPERATIONS.md, \"When a check fails (exit 8)\", says what to do".into(),
            ),
            Self::Verify(_) | Self::State(_) | Self::Durable(_) | Self::Io { .. } => Some(
                "nothing on the node changed; fix the file or permission named above and run again".into(),
            ),
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// The message of [`ApplyError::ProfileKind`].
fn profile_kind_message(path: &std::path::Path, expected: crate::site::ProfileKind) -> String {
    match expected {
        crate::site::ProfileKind::Node => format!(
            "`{}` is a cluster profile (it has a [cluster] table); this command works on one node and needs that node's site profile",
            path.display()
        ),
        crate::site::ProfileKind::Cluster => format!(
            "`{}` is a node's site profile, not a cluster profile (it has no [cluster] table); this command needs the coordinator's cluster profile",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_named_and_other_kinds_are_kept() {
        let full = StepError::from(io::Error::from(io::ErrorKind::StorageFull));
        assert!(full.to_string().contains("the filesystem is full"));
        assert_eq!(full.io_kind(), Some(io::ErrorKind::StorageFull));
        let denied = StepError::from(io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(denied.io_kind(), Some(io::ErrorKind::PermissionDenied));
        assert!(!denied.to_string().contains("full"));
        let damaged = StepError::BackupDamaged {
            path: "/b/x".into(),
        };
        assert_eq!(damaged.io_kind(), None);
    }

    #[test]
    fn every_error_has_its_exit_code() {
        let refused = ApplyError::Refused {
            bundle: "b".into(),
            reason: "r".into(),
            help: "h".into(),
        };
        assert_eq!(refused.exit_code(), exit::REFUSED);
        assert_eq!(refused.help().as_deref(), Some("h"));
        let rolled = ApplyError::RolledBack {
            version: "1.1.0".into(),
            old_version: "1.0.0".into(),
            step: "health".into(),
            cause: Box::new(StepError::Interrupted),
        };
        assert_eq!(rolled.exit_code(), exit::ROLLED_BACK);
        assert!(rolled.to_string().contains("rolled back to 1.0.0"));
        let stopped = ApplyError::RolloutStopped {
            version: "1.1.0".into(),
            node: "at node n2".into(),
            reason: "r".into(),
            node_outcome: NodeOutcome::NeedsOperator,
        };
        assert_eq!(stopped.exit_code(), exit::NEEDS_OPERATOR);
    }
}
