//! The migrate step: each migration run and recorded exactly as the
//! service's own tool runs and records it (docs/SITE.md, "Migrations"), so
//! the migrator the service embeds finds nothing left to do, and a database
//! the service migrated by itself is taken as it is:
//!
//! | | diesel 2.3 | sqlx 0.9 | golang-migrate v4 (`sqlite3`) |
//! |---|---|---|---|
//! | foreign keys | SQLite's default, off: diesel runs no `PRAGMA` (`sqlite/connection/raw.rs`) | on: `PRAGMA foreign_keys = ON` at connect (sqlx-sqlite `options/mod.rs`) | off: mattn/go-sqlite3 sets none unless asked |
//! | transaction | one per migration, holding its history row, unless `metadata.toml` says `run_in_transaction = false` (`migration_harness.rs`, `run_migration`) | one per migration, holding its row, unless the file starts with `-- no-transaction` (sqlx-sqlite `migrate.rs`, `apply`) | none added: the script runs as written (the driver's `x-no-tx-wrap`) |
//! | history | `__diesel_schema_migrations (version, run_on)` | `_sqlx_migrations (version, description, installed_on, success, checksum, execution_time)` | `schema_migrations (version, dirty)`, one row, dirty while the script runs (`migrate.go`, `runMigrations`) |
//! | pending | versions not in its table, in text order | versions not in its table, in `i64` order; a failed row or a recorded version the bundle lacks is refused | versions above the recorded one, in `u64` order; a dirty row or a recorded version the bundle lacks is refused |
//!
//! All migrations of one database run on one connection, as each tool runs
//! them. airlock's own table `airlock_migrations` keeps, beside the tool's,
//! the bundle version and SHA-256 of each migration airlock ran. Whatever
//! fails, with or without a transaction, the database backup taken before
//! the apply is what the rollback restores.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_formats::migration::{sqlx_checksum, sqlx_no_transaction};
use airlock_formats::{Direction, Manifest, Migration, MigrationTool, MigrationVersion};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension as _};
use serde::{Deserialize, Serialize};

use crate::error::{MigrationRef, StepError};

/// airlock's own table of the migrations it ran, in each migrated database.
pub const LEDGER: &str = "airlock_migrations";

const CREATE_LEDGER: &str = "CREATE TABLE IF NOT EXISTS airlock_migrations (
    version TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    applied_at INTEGER NOT NULL,
    bundle_version TEXT NOT NULL
)";

/// diesel's history table, byte for byte as diesel creates it (diesel 2.3
/// `migration/setup_migration_table.sql`), so the schema matches a
/// database diesel set up.
const CREATE_DIESEL: &str = "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (
       version VARCHAR(50) PRIMARY KEY NOT NULL,
       run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
";

/// sqlx's history table as sqlx-sqlite 0.9 `migrate.rs`
/// (`ensure_migrations_table`) creates it.
const CREATE_SQLX: &str = "
CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
);
                ";

/// golang-migrate's history table as its `sqlite3` driver creates it
/// (`database/sqlite3/sqlite3.go`, `ensureVersionTable`).
const CREATE_GOLANG_MIGRATE: &str = "
\tCREATE TABLE IF NOT EXISTS schema_migrations (version uint64,dirty bool);
  CREATE UNIQUE INDEX IF NOT EXISTS version_unique ON schema_migrations (version);
  ";

/// How the migrate step carries out one pending migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Run it in a transaction that also writes its history rows.
    #[default]
    InTransaction,
    /// Run it with no transaction around it, as its tool does (diesel's
    /// `run_in_transaction = false`, sqlx's `-- no-transaction`, every
    /// golang-migrate script). A failure half way is undone by restoring the
    /// database's backup.
    WithoutTransaction,
    /// An earlier airlock ran it (it is in `airlock_migrations`) but the
    /// tool's table lacks it: write the tool's row only, as sqlx's
    /// `Migrate::skip` does, so the service's migrator does not run it again.
    RecordOnly,
}

impl Action {
    /// How plans and logs say it: `in a transaction`, ...
    pub fn describe(self) -> &'static str {
        match self {
            Self::InTransaction => "in a transaction",
            Self::WithoutTransaction => "without a transaction",
            Self::RecordOnly => "record only (ran before airlock 0.2 recorded it for the tool)",
        }
    }
}

/// A migration the database does not have yet, and how it will be carried out.
#[derive(Debug, Clone)]
pub struct Pending<'a> {
    /// The migration.
    pub migration: Migration<'a>,
    /// What the step does.
    pub action: Action,
}

/// What a database's tool table says was applied.
enum ToolHistory {
    /// diesel: the versions in `__diesel_schema_migrations`.
    Diesel(BTreeSet<MigrationVersion>),
    /// sqlx: version → checksum, and the first version with `success = false`.
    Sqlx {
        applied: BTreeMap<MigrationVersion, Vec<u8>>,
        dirty: Option<i64>,
    },
    /// golang-migrate: its one row, `(version, dirty)`, if it reads.
    GolangMigrate(Option<(i64, bool)>),
}

struct History {
    tool: ToolHistory,
    /// `airlock_migrations`: version as the tool reads it → SHA-256, hex.
    ledger: BTreeMap<MigrationVersion, String>,
}

fn table_exists(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            params![table],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// A value of diesel's `version` column as diesel's `String` reads it
/// (SQLite's text conversion).
fn as_text(value: rusqlite::types::Value) -> Option<String> {
    use rusqlite::types::Value;
    match value {
        Value::Text(t) => Some(t),
        Value::Integer(n) => Some(n.to_string()),
        Value::Real(r) => Some(r.to_string()),
        Value::Blob(b) => String::from_utf8(b).ok(),
        Value::Null => None,
    }
}

fn read_history(conn: Option<&Connection>, tool: MigrationTool) -> rusqlite::Result<History> {
    let Some(conn) = conn else {
        return Ok(History {
            tool: match tool {
                MigrationTool::Diesel => ToolHistory::Diesel(BTreeSet::new()),
                MigrationTool::Sqlx => ToolHistory::Sqlx {
                    applied: BTreeMap::new(),
                    dirty: None,
                },
                MigrationTool::GolangMigrate => ToolHistory::GolangMigrate(None),
            },
            ledger: BTreeMap::new(),
        });
    };
    let mut ledger = BTreeMap::new();
    if table_exists(conn, LEDGER)? {
        let mut stmt = conn.prepare("SELECT version, sha256 FROM airlock_migrations")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (version, sha) = row?;
            // Rows an older airlock wrote say `0001` or `2024-02-14-140000`;
            // the tool's reading makes them comparable.
            if let Some(v) = tool.version(&version) {
                ledger.insert(v, sha);
            }
        }
    }
    let table = tool.history_table();
    let exists = table_exists(conn, table)?;
    let tool = match tool {
        MigrationTool::Diesel => {
            let mut applied = BTreeSet::new();
            if exists {
                let mut stmt = conn.prepare(
                    "SELECT `__diesel_schema_migrations`.`version` FROM `__diesel_schema_migrations`",
                )?;
                for v in stmt.query_map([], |r| r.get::<_, rusqlite::types::Value>(0))? {
                    if let Some(text) = as_text(v?) {
                        applied.insert(MigrationVersion::Text(text));
                    }
                }
            }
            ToolHistory::Diesel(applied)
        }
        MigrationTool::Sqlx => {
            let mut applied = BTreeMap::new();
            let mut dirty = None;
            if exists {
                dirty = conn
                    .query_row(
                        "SELECT version FROM _sqlx_migrations WHERE success = false ORDER BY version LIMIT 1",
                        [],
                        |r| r.get(0),
                    )
                    .optional()?;
                let mut stmt = conn
                    .prepare("SELECT version, checksum FROM _sqlx_migrations ORDER BY version")?;
                for row in
                    stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?
                {
                    let (v, checksum) = row?;
                    applied.insert(MigrationVersion::Signed(v), checksum);
                }
            }
            ToolHistory::Sqlx { applied, dirty }
        }
        MigrationTool::GolangMigrate => ToolHistory::GolangMigrate(if exists {
            // golang-migrate's `Version`: any error, no row included, is "no version".
            conn.query_row(
                "SELECT version, dirty FROM schema_migrations LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?)),
            )
            .ok()
        } else {
            None
        }),
    };
    Ok(History { tool, ledger })
}

fn migration_ref(database: &str, path: &Path, m: &Migration<'_>) -> Box<MigrationRef> {
    Box::new(MigrationRef {
        database: database.into(),
        path: path.into(),
        tool: m.tool,
        version: m.version.to_string(),
        description: m.description.clone(),
        file: m.entry.path.to_string(),
    })
}

/// The `up` migrations of `database` in `manifest` that the database at
/// `path` does not have, in the order its tool runs them, with how each
/// will be carried out (see the module docs for each tool's rule). A
/// database file that does not exist has none.
///
/// # Errors
/// - [`StepError::MigrationChanged`]: a migration the database recorded
///   (SHA-256 in `airlock_migrations`, sqlx's SHA-384 checksum) differs
///   from the bundle's.
/// - [`StepError::MigrationDirty`]: the tool's table records a migration
///   that failed half way (sqlx `success = false`, golang-migrate `dirty`).
/// - [`StepError::MigrationMissing`]: the tool's table records a version
///   this bundle has no migration for (sqlx, golang-migrate).
/// - [`StepError::Sqlite`] when the database cannot be read;
///   [`StepError::Inconsistent`] for a manifest that breaks its tool's rules.
pub fn pending<'a>(
    path: &Path,
    database: &str,
    manifest: &'a Manifest,
) -> Result<Vec<Pending<'a>>, StepError> {
    let all = manifest
        .migrations(database)
        .map_err(|e| StepError::Inconsistent {
            what: e.to_string(),
        })?;
    let Some(tool) = all.first().map(|m| m.tool) else {
        return Ok(Vec::new());
    };
    let fail = |source| StepError::Sqlite {
        what: format!("reading the migration history of database `{database}`"),
        path: path.into(),
        source,
    };
    let conn = if fs_err::exists(path)? {
        Some(Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(fail)?)
    } else {
        None
    };
    let history = read_history(conn.as_ref(), tool).map_err(fail)?;
    drop(conn);
    let ups: Vec<&Migration<'a>> = all
        .iter()
        .filter(|m| m.direction == Direction::Up)
        .collect();
    for m in &ups {
        if let Some(sha) = history.ledger.get(&m.version) {
            if *sha != m.entry.sha256.to_hex() {
                return Err(StepError::MigrationChanged {
                    migration: migration_ref(database, path, m),
                    digest: "SHA-256 in airlock_migrations",
                    recorded: sha.clone(),
                    expected: m.entry.sha256.to_hex(),
                });
            }
        }
    }
    let missing = |version: String| StepError::MigrationMissing {
        database: database.into(),
        path: path.into(),
        tool,
        version,
    };
    let dirty = |version: String| StepError::MigrationDirty {
        database: database.into(),
        path: path.into(),
        tool,
        version,
    };
    let run = |m: &Migration<'a>| Pending {
        migration: m.clone(),
        action: if history.ledger.contains_key(&m.version) {
            Action::RecordOnly
        } else if m.transaction {
            Action::InTransaction
        } else {
            Action::WithoutTransaction
        },
    };
    let mut out = Vec::new();
    match &history.tool {
        ToolHistory::Diesel(applied) => {
            for m in ups {
                if !applied.contains(&m.version) {
                    out.push(run(m));
                }
            }
        }
        ToolHistory::Sqlx { applied, dirty: d } => {
            if let Some(v) = d {
                return Err(dirty(v.to_string()));
            }
            let known: BTreeSet<&MigrationVersion> = all.iter().map(|m| &m.version).collect();
            if let Some(v) = applied.keys().find(|v| !known.contains(v)) {
                return Err(missing(v.to_string()));
            }
            for m in ups {
                match applied.get(&m.version) {
                    Some(recorded) => {
                        let recorded = hex::encode(recorded);
                        match &m.info.checksum {
                            Some(expected) if *expected != recorded => {
                                return Err(StepError::MigrationChanged {
                                    migration: migration_ref(database, path, m),
                                    digest: "SHA-384 checksum in _sqlx_migrations",
                                    recorded,
                                    expected: expected.clone(),
                                })
                            }
                            _ => {}
                        }
                    }
                    None => out.push(run(m)),
                }
            }
        }
        ToolHistory::GolangMigrate(row) => {
            let current = match *row {
                Some((v, true)) => return Err(dirty(v.to_string())),
                Some((v, false)) => u64::try_from(v).ok(),
                None => None,
            };
            if let Some(v) = current {
                let v = MigrationVersion::Unsigned(v);
                if !all.iter().any(|m| m.version == v) {
                    return Err(missing(v.to_string()));
                }
            }
            for m in ups {
                if current.is_none_or(|c| m.version > MigrationVersion::Unsigned(c)) {
                    out.push(run(m));
                }
            }
        }
    }
    Ok(out)
}

/// One database's connection for its migrations, set up as the tool sets
/// up its own (foreign keys; the tool's history table and airlock's,
/// created if missing). A database file that does not exist is created.
pub struct Session {
    database: String,
    path: PathBuf,
    tool: MigrationTool,
    conn: Connection,
}

impl Session {
    /// Opens `path` for the migrations of `database` by `tool`.
    ///
    /// # Errors
    /// [`StepError::Sqlite`] naming the database.
    pub fn open(database: &str, path: &Path, tool: MigrationTool) -> Result<Self, StepError> {
        let fail = |source| StepError::Sqlite {
            what: format!("opening database `{database}` for its {tool} migrations"),
            path: path.into(),
            source,
        };
        let conn = Connection::open(path).map_err(fail)?;
        // The service is stopped; a lock left by anything else is waited for.
        conn.busy_timeout(Duration::from_secs(10)).map_err(fail)?;
        let foreign_keys = match tool {
            MigrationTool::Sqlx => "ON",
            MigrationTool::Diesel | MigrationTool::GolangMigrate => "OFF",
        };
        conn.execute_batch(&format!("PRAGMA foreign_keys = {foreign_keys};"))
            .map_err(fail)?;
        let create = match tool {
            MigrationTool::Diesel => CREATE_DIESEL,
            MigrationTool::Sqlx => CREATE_SQLX,
            MigrationTool::GolangMigrate => CREATE_GOLANG_MIGRATE,
        };
        conn.execute_batch(create).map_err(fail)?;
        conn.execute_batch(CREATE_LEDGER).map_err(fail)?;
        Ok(Self {
            database: database.into(),
            path: path.into(),
            tool,
            conn,
        })
    }

    /// The database name this session migrates.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Carries out one migration: `sql` is its script, `bundle_version` the
    /// release recorded in `airlock_migrations`.
    ///
    /// # Errors
    /// [`StepError::Migration`] with SQLite's error (a transaction is rolled
    /// back; without one, the database's backup undoes what ran);
    /// [`StepError::Inconsistent`] when the script does not match what the
    /// signed manifest says of it.
    pub fn apply(
        &mut self,
        m: &Migration<'_>,
        action: Action,
        sql: &str,
        bundle_version: &str,
    ) -> Result<(), StepError> {
        if m.tool != self.tool {
            return Err(StepError::Inconsistent {
                what: format!(
                    "migration `{}` is {}, but database `{}` is migrated by {}",
                    m.entry.path, m.tool, self.database, self.tool
                ),
            });
        }
        let checksum = match self.tool {
            MigrationTool::Sqlx => {
                let checksum = sqlx_checksum(sql);
                let stated = m.info.checksum.as_deref();
                if stated.is_some_and(|c| c != hex::encode(&checksum)) {
                    return Err(StepError::Inconsistent {
                        what: format!(
                            "`{}` does not have the SHA-384 the manifest states",
                            m.entry.path
                        ),
                    });
                }
                let without = sqlx_no_transaction(sql);
                if action != Action::RecordOnly
                    && without != (action == Action::WithoutTransaction)
                    && m.info.tool.is_some()
                {
                    return Err(StepError::Inconsistent {
                        what: format!(
                            "`{}` {} with `-- no-transaction`, which the manifest does not say",
                            m.entry.path,
                            if without { "starts" } else { "does not start" }
                        ),
                    });
                }
                Some(checksum)
            }
            _ => None,
        };
        // sqlx decides by the file's first bytes, also for airlock 0.1 bundles.
        let action = match (self.tool, action) {
            (MigrationTool::Sqlx, Action::InTransaction) if sqlx_no_transaction(sql) => {
                Action::WithoutTransaction
            }
            (_, action) => action,
        };
        let database = self.database.clone();
        let path = self.path.clone();
        let fail = |source| StepError::Migration {
            migration: migration_ref(&database, &path, m),
            source,
        };
        let version = m.version.to_string();
        let ledger = |conn: &Connection| {
            conn.execute(
                "INSERT INTO airlock_migrations (version, name, sha256, applied_at, bundle_version) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![version, m.name, m.entry.sha256.to_hex(), crate::state::now(), bundle_version],
            )
        };
        let started = Instant::now();
        match (self.tool, action) {
            (_, Action::RecordOnly) => {
                let tx = self.conn.transaction().map_err(fail)?;
                record(&tx, m, checksum.as_deref()).map_err(fail)?;
                tx.commit().map_err(fail)?;
                return Ok(());
            }
            (MigrationTool::GolangMigrate, _) => {
                // migrate.go `runMigrations`: SetVersion(v, dirty), the
                // script as written, SetVersion(v, clean); each its own
                // transaction. airlock's row joins the last.
                set_golang_version(&mut self.conn, &m.version, true).map_err(fail)?;
                self.conn.execute_batch(sql).map_err(fail)?;
                self.no_open_transaction(m)?;
                let tx = self.conn.transaction().map_err(fail)?;
                golang_version_rows(&tx, &m.version, false).map_err(fail)?;
                ledger(&tx).map_err(fail)?;
                tx.commit().map_err(fail)?;
            }
            (_, Action::InTransaction) => {
                let tx = self.conn.transaction().map_err(fail)?;
                tx.execute_batch(sql).map_err(fail)?;
                record(&tx, m, checksum.as_deref()).map_err(fail)?;
                ledger(&tx).map_err(fail)?;
                tx.commit().map_err(fail)?;
            }
            (_, Action::WithoutTransaction) => {
                self.conn.execute_batch(sql).map_err(fail)?;
                self.no_open_transaction(m)?;
                record(&self.conn, m, checksum.as_deref()).map_err(fail)?;
                ledger(&self.conn).map_err(fail)?;
            }
        }
        if let MigrationVersion::Signed(v) = m.version {
            // sqlx-sqlite `apply`: the time from before BEGIN to after
            // COMMIT, in nanoseconds, written after the commit.
            let nanos = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
            self.conn
                .execute(
                    "\n    UPDATE _sqlx_migrations\n    SET execution_time = ?1\n    WHERE version = ?2\n                ",
                    params![nanos, v],
                )
                .map_err(fail)?;
        }
        Ok(())
    }

    /// A script run without a transaction around it that leaves one open
    /// (`BEGIN` without `COMMIT`) would have its changes dropped when the
    /// connection closes, after being recorded: it fails instead.
    fn no_open_transaction(&self, m: &Migration<'_>) -> Result<(), StepError> {
        if self.conn.is_autocommit() {
            return Ok(());
        }
        Err(StepError::Migration {
            migration: migration_ref(&self.database, &self.path, m),
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                Some(
                    "the script began a transaction and did not end it (BEGIN without COMMIT)"
                        .into(),
                ),
            ),
        })
    }
}

/// Writes the tool's history row for `m` on `conn`, as the tool writes it.
fn record(conn: &Connection, m: &Migration<'_>, checksum: Option<&[u8]>) -> rusqlite::Result<()> {
    match &m.version {
        // diesel `MigrationHarness::run_migration`.
        MigrationVersion::Text(v) => conn
            .execute(
                "INSERT INTO `__diesel_schema_migrations` (`version`) VALUES (?)",
                params![v],
            )
            .map(drop),
        // sqlx-sqlite `execute_migration` (and `skip`): execution_time is -1
        // until the UPDATE after the commit.
        MigrationVersion::Signed(v) => conn
            .execute(
                "\n    INSERT INTO _sqlx_migrations ( version, description, success, checksum, execution_time )\n    VALUES ( ?1, ?2, TRUE, ?3, -1 )\n        ",
                params![v, m.description, checksum.unwrap_or_default()],
            )
            .map(drop),
        MigrationVersion::Unsigned(_) => golang_version_rows(conn, &m.version, false),
    }
}

/// golang-migrate's `SetVersion` body: its table holds one row.
fn golang_version_rows(
    conn: &Connection,
    version: &MigrationVersion,
    dirty: bool,
) -> rusqlite::Result<()> {
    let MigrationVersion::Unsigned(v) = version else {
        return Ok(());
    };
    // SQLite integers are i64; golang-migrate stores its `int` the same way.
    let v = i64::try_from(*v).unwrap_or(i64::MAX);
    conn.execute("DELETE FROM schema_migrations", [])?;
    conn.execute(
        "INSERT INTO schema_migrations (version, dirty) VALUES (?, ?)",
        params![v, dirty],
    )?;
    Ok(())
}

fn set_golang_version(
    conn: &mut Connection,
    version: &MigrationVersion,
    dirty: bool,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    golang_version_rows(&tx, version, dirty)?;
    tx.commit()
}
