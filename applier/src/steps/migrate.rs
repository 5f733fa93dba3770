//! The migrate step: each migration run and recorded exactly as the
//! service's own tool runs and records it (docs/SITE.md, "Migrations"), so
//! the migrator the service embeds finds nothing left to do, and a database
//! the service migrated by itself is taken as it is:
//!
//! | | diesel 2.3 | sqlx 0.9 | golang-migrate v4 (`sqlite3`) |
//! |---|---|---|---|
//! | foreign keys | SQLite's default, off: diesel runs no `PRAGMA` (`sqlite/connection/raw.rs`) | on: `PRAGMA foreign_keys = ON` at connect (sqlx-sqlite `options/mod.rs`) | off: mattn/go-sqlite3 sets none unless asked |
//! | transaction | one per migration, holding its history row, unless `metadata.toml` says `run_in_transaction = false` (`migration_harness.rs`, `run_migration`) | one per migration, holding its row, unless the file starts with `-- no-transaction` (sqlx-sqlite `migrate.rs`, `apply`) | the script as written (the driver's `x-no-tx-wrap=true`), or in a transaction with the spec's `tx_wrap` (the driver's default, `executeQuery`) |
//! | history | `__diesel_schema_migrations (version, run_on)` | `_sqlx_migrations (version, description, installed_on, success, checksum, execution_time)` | `schema_migrations (version, dirty)`, one row, dirty while the script runs (`migrate.go`, `runMigrations`) |
//! | pending | versions not in its table, in text order | versions not in its table, in `i64` order; a failed row or a recorded version the bundle lacks is refused | versions above the recorded one, in `u64` order; a dirty row or a recorded version the bundle lacks is refused |
//!
//! Foreign keys and the history table follow the manifest where the service
//! sets its tool up otherwise. All migrations of one database run on one
//! connection, as each tool runs them, every statement stepped to its end as
//! `sqlite3_exec` steps it. airlock's own table `airlock_migrations` keeps, beside the tool's,
//! the bundle version and SHA-256 of each migration airlock ran. Whatever
//! fails, with or without a transaction, the database backup taken before
//! the apply is what the rollback restores.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_formats::migration::{sqlx_checksum, sqlx_no_transaction};
use airlock_formats::{Direction, Manifest, Migration, MigrationTool, MigrationVersion};
use rusqlite::fallible_iterator::FallibleIterator as _;
use rusqlite::{params, Batch, Connection, OpenFlags, OptionalExtension as _};
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

/// The statement that creates the tool's history table `table`, byte for
/// byte as the tool writes it, so the schema matches a database the tool
/// set up: diesel 2.3 `migration/setup_migration_table.sql`; sqlx-sqlite 0.9
/// `migrate.rs`, `ensure_migrations_table`; golang-migrate
/// `database/sqlite3/sqlite3.go`, `ensureVersionTable` (whose index name is
/// fixed whatever the table).
fn create_history(tool: MigrationTool, table: &str) -> String {
    match tool {
        MigrationTool::Diesel => "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (
       version VARCHAR(50) PRIMARY KEY NOT NULL,
       run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
"
        .into(),
        MigrationTool::Sqlx => format!(
            "
CREATE TABLE IF NOT EXISTS {table} (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
);
                "
        ),
        MigrationTool::GolangMigrate => format!(
            "
\tCREATE TABLE IF NOT EXISTS {table} (version uint64,dirty bool);
  CREATE UNIQUE INDEX IF NOT EXISTS version_unique ON {table} (version);
  "
        ),
    }
}

/// Runs `sql` as `sqlite3_exec` runs it, which diesel, sqlx and
/// mattn/go-sqlite3 all use: each statement in turn, every row of it
/// stepped. (rusqlite's `execute_batch` steps a statement once, so a
/// `SELECT` whose rows have side effects would stop at its first row.)
fn run_script(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    let mut batch = Batch::new(conn, sql);
    while let Some(mut statement) = batch.next()? {
        let mut rows = statement.raw_query();
        while rows.next()?.is_some() {}
    }
    Ok(())
}

/// How the migrate step carries out one pending migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Run it in a transaction that also writes its history rows.
    #[default]
    InTransaction,
    /// Run it with no transaction around it, as its tool does (diesel's
    /// `run_in_transaction = false`, sqlx's `-- no-transaction`,
    /// golang-migrate without `tx_wrap`). A failure half way is undone by
    /// restoring the database's backup.
    WithoutTransaction,
    /// airlock 0.1 ran it (it is in `airlock_migrations`) and the database
    /// has no history table of the tool: write the tool's row only, as
    /// sqlx's `Migrate::skip` does, so the service's migrator does not run
    /// it again.
    RecordOnly,
}

impl Action {
    /// How plans and logs say it: `in a transaction`, ...
    pub fn describe(self) -> &'static str {
        match self {
            Self::InTransaction => "in a transaction",
            Self::WithoutTransaction => "without a transaction",
            Self::RecordOnly => "record only: airlock 0.1 ran it and recorded it only for itself",
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
    /// Whether the tool's history table exists.
    exists: bool,
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

fn read_history(
    conn: Option<&Connection>,
    tool: MigrationTool,
    table: &str,
) -> rusqlite::Result<History> {
    let empty = match tool {
        MigrationTool::Diesel => ToolHistory::Diesel(BTreeSet::new()),
        MigrationTool::Sqlx => ToolHistory::Sqlx {
            applied: BTreeMap::new(),
            dirty: None,
        },
        MigrationTool::GolangMigrate => ToolHistory::GolangMigrate(None),
    };
    let Some(conn) = conn else {
        return Ok(History {
            tool: empty,
            exists: false,
            ledger: BTreeMap::new(),
        });
    };
    let mut ledger = BTreeMap::new();
    if table_exists(conn, LEDGER)? {
        let mut stmt = conn.prepare("SELECT version, sha256 FROM airlock_migrations")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (version, sha) = row?;
            // Rows airlock 0.1 wrote say `0001` or `2024-02-14-140000`;
            // the tool's reading makes them comparable.
            if let Some(v) = tool.version(&version) {
                ledger.insert(v, sha);
            }
        }
    }
    let exists = table_exists(conn, table)?;
    let history = if !exists {
        empty
    } else {
        match tool {
            MigrationTool::Diesel => {
                let mut applied = BTreeSet::new();
                let mut stmt = conn.prepare(
                    "SELECT `__diesel_schema_migrations`.`version` FROM `__diesel_schema_migrations`",
                )?;
                for v in stmt.query_map([], |r| r.get::<_, rusqlite::types::Value>(0))? {
                    if let Some(text) = as_text(v?) {
                        applied.insert(MigrationVersion::Text(text));
                    }
                }
                ToolHistory::Diesel(applied)
            }
            MigrationTool::Sqlx => {
                let dirty = conn
                    .query_row(
                        &format!(
                            "SELECT version FROM {table} WHERE success = false ORDER BY version LIMIT 1"
                        ),
                        [],
                        |r| r.get(0),
                    )
                    .optional()?;
                let mut applied = BTreeMap::new();
                let mut stmt = conn.prepare(&format!(
                    "SELECT version, checksum FROM {table} ORDER BY version"
                ))?;
                for row in
                    stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?
                {
                    let (v, checksum) = row?;
                    applied.insert(MigrationVersion::Signed(v), checksum);
                }
                ToolHistory::Sqlx { applied, dirty }
            }
            // golang-migrate's `Version` takes any error for "no version";
            // here only an empty table or a row that is not (integer,
            // boolean) is. A locked or unreadable database is an error, not
            // a reason to run every migration again.
            MigrationTool::GolangMigrate => ToolHistory::GolangMigrate(
                match conn.query_row(
                    &format!("SELECT version, dirty FROM {table} LIMIT 1"),
                    [],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?)),
                ) {
                    Ok(row) => Some(row),
                    Err(
                        rusqlite::Error::QueryReturnedNoRows
                        | rusqlite::Error::InvalidColumnType(..)
                        | rusqlite::Error::FromSqlConversionFailure(..)
                        | rusqlite::Error::IntegralValueOutOfRange(..),
                    ) => None,
                    Err(e) => return Err(e),
                },
            ),
        }
    };
    Ok(History {
        tool: history,
        exists,
        ledger,
    })
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
/// database file that does not exist has none. The tool's history table is
/// the truth; `airlock_migrations` counts only where the database has no
/// such table (airlock 0.1 wrote no other).
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
    let Some(first) = all.first() else {
        return Ok(Vec::new());
    };
    let (tool, table) = (first.tool, first.history_table.clone());
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
    let history = read_history(conn.as_ref(), tool, &table).map_err(fail)?;
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
                    digest: "SHA-256 in airlock_migrations".into(),
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
        table: table.clone(),
        version,
    };
    let dirty = |version: String| StepError::MigrationDirty {
        database: database.into(),
        path: path.into(),
        tool,
        table: table.clone(),
        version,
    };
    // A migration airlock recorded while the tool's table exists but lacks
    // it was reverted with the tool (its down script ran): it runs again.
    let run = |m: &Migration<'a>| Pending {
        migration: m.clone(),
        action: if !history.exists && history.ledger.contains_key(&m.version) {
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
                                    digest: format!("SHA-384 checksum in {table}"),
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
    table: String,
    conn: Connection,
}

impl Session {
    /// Opens `path` for the migrations of `database`, set up as `first`
    /// (any of them) says: its tool, foreign keys and history table.
    ///
    /// # Errors
    /// [`StepError::Sqlite`] naming the database.
    pub fn open(database: &str, path: &Path, first: &Migration<'_>) -> Result<Self, StepError> {
        let tool = first.tool;
        let fail = |source| StepError::Sqlite {
            what: format!("opening database `{database}` for its {tool} migrations"),
            path: path.into(),
            source,
        };
        let conn = Connection::open(path).map_err(fail)?;
        // The service is stopped; a lock left by anything else is waited for.
        conn.busy_timeout(Duration::from_secs(10)).map_err(fail)?;
        let foreign_keys = if first.foreign_keys { "ON" } else { "OFF" };
        conn.execute_batch(&format!("PRAGMA foreign_keys = {foreign_keys};"))
            .map_err(fail)?;
        conn.execute_batch(&create_history(tool, &first.history_table))
            .map_err(fail)?;
        conn.execute_batch(CREATE_LEDGER).map_err(fail)?;
        Ok(Self {
            database: database.into(),
            path: path.into(),
            tool,
            table: first.history_table.clone(),
            conn,
        })
    }

    /// The database name this session migrates.
    pub fn database(&self) -> &str {
        &self.database
    }

    fn inconsistent(&self, m: &Migration<'_>, what: String) -> StepError {
        StepError::Inconsistent {
            what: format!(
                "{what} (`{}`, for database `{}` at {}); the bundle was built wrongly: rebuild it with airlock-build",
                m.entry.path,
                self.database,
                self.path.display()
            ),
        }
    }

    /// Carries out one migration: `sql` is its script, `bundle_version` the
    /// release recorded in `airlock_migrations`.
    ///
    /// # Errors
    /// [`StepError::Migration`] with SQLite's error (a transaction is rolled
    /// back; without one, the database's backup undoes what ran);
    /// [`StepError::Inconsistent`] when the migration does not match this
    /// database's setup or what the signed manifest says of it.
    pub fn apply(
        &mut self,
        m: &Migration<'_>,
        action: Action,
        sql: &str,
        bundle_version: &str,
    ) -> Result<(), StepError> {
        if m.tool != self.tool || m.history_table != self.table {
            return Err(self.inconsistent(
                m,
                format!(
                    "the migration is {}'s recorded in {}, but the database's others are {}'s in {}",
                    m.tool, m.history_table, self.tool, self.table
                ),
            ));
        }
        // sqlx decides by the file's first bytes; for bundles of airlock
        // 0.1 that is the only word on it.
        let action = match (self.tool, action) {
            (MigrationTool::Sqlx, Action::InTransaction | Action::WithoutTransaction) => {
                let without = sqlx_no_transaction(sql);
                if m.info.tool.is_some() && without != (action == Action::WithoutTransaction) {
                    return Err(self.inconsistent(
                        m,
                        format!(
                            "the script {} with `-- no-transaction`, which the manifest does not say",
                            if without { "starts" } else { "does not start" }
                        ),
                    ));
                }
                if without {
                    Action::WithoutTransaction
                } else {
                    Action::InTransaction
                }
            }
            (_, action) => action,
        };
        // The checksum the manifest states was computed by the builder from
        // these bytes, with the service's ignored characters left out.
        let checksum = match (self.tool, &m.info.checksum) {
            (MigrationTool::Sqlx, Some(hex_text)) => Some(
                hex::decode(hex_text)
                    .map_err(|_| self.inconsistent(m, "the checksum is not hex".into()))?,
            ),
            (MigrationTool::Sqlx, None) => Some(sqlx_checksum(sql, &[])),
            _ => None,
        };
        let golang_version = match m.version {
            MigrationVersion::Unsigned(v) => Some(i64::try_from(v).map_err(|_| {
                self.inconsistent(
                    m,
                    format!("golang-migrate version {v} does not fit a signed 64-bit integer"),
                )
            })?),
            _ => None,
        };
        let database = self.database.clone();
        let path = self.path.clone();
        let fail = |source| StepError::Migration {
            migration: migration_ref(&database, &path, m),
            source,
        };
        let version = m.version.to_string();
        let table = self.table.clone();
        let record = |conn: &Connection| -> rusqlite::Result<()> {
            match (&m.version, golang_version) {
                // diesel `MigrationHarness::run_migration`.
                (MigrationVersion::Text(v), _) => conn
                    .execute(
                        "INSERT INTO `__diesel_schema_migrations` (`version`) VALUES (?)",
                        params![v],
                    )
                    .map(drop),
                // sqlx-sqlite `execute_migration` (and `skip`):
                // execution_time is -1 until the UPDATE after the commit.
                (MigrationVersion::Signed(v), _) => conn
                    .execute(
                        &format!("\n    INSERT INTO {table} ( version, description, success, checksum, execution_time )\n    VALUES ( ?1, ?2, TRUE, ?3, -1 )\n        "),
                        params![v, m.description, checksum.as_deref().unwrap_or_default()],
                    )
                    .map(drop),
                (MigrationVersion::Unsigned(_), Some(v)) => set_version(conn, &table, v, false),
                (MigrationVersion::Unsigned(_), None) => Ok(()),
            }
        };
        // Written with the tool's row; a row left by a migration the tool
        // since reverted is replaced.
        let ledger = |conn: &Connection| {
            conn.execute(
                "INSERT OR REPLACE INTO airlock_migrations (version, name, sha256, applied_at, bundle_version) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![version, m.name, m.entry.sha256.to_hex(), crate::state::now(), bundle_version],
            )
        };
        let started = Instant::now();
        match (golang_version, action) {
            (_, Action::RecordOnly) => {
                let tx = self.conn.transaction().map_err(fail)?;
                record(&tx).map_err(fail)?;
                tx.commit().map_err(fail)?;
                return Ok(());
            }
            (Some(v), action) => {
                // migrate.go `runMigrations`: SetVersion(v, dirty), the
                // script (in a transaction of its own with the driver's
                // default, as written with `x-no-tx-wrap`), SetVersion(v,
                // clean); airlock's row joins the last.
                let tx = self.conn.transaction().map_err(fail)?;
                set_version(&tx, &table, v, true).map_err(fail)?;
                tx.commit().map_err(fail)?;
                if action == Action::InTransaction {
                    let tx = self.conn.transaction().map_err(fail)?;
                    run_script(&tx, sql).map_err(fail)?;
                    tx.commit().map_err(fail)?;
                } else {
                    run_script(&self.conn, sql).map_err(fail)?;
                    self.no_open_transaction(m)?;
                }
                let tx = self.conn.transaction().map_err(fail)?;
                record(&tx).map_err(fail)?;
                ledger(&tx).map_err(fail)?;
                tx.commit().map_err(fail)?;
            }
            (None, Action::InTransaction) => {
                let tx = self.conn.transaction().map_err(fail)?;
                run_script(&tx, sql).map_err(fail)?;
                record(&tx).map_err(fail)?;
                ledger(&tx).map_err(fail)?;
                tx.commit().map_err(fail)?;
            }
            (None, Action::WithoutTransaction) => {
                run_script(&self.conn, sql).map_err(fail)?;
                self.no_open_transaction(m)?;
                record(&self.conn).map_err(fail)?;
                ledger(&self.conn).map_err(fail)?;
            }
        }
        if let MigrationVersion::Signed(v) = m.version {
            // sqlx-sqlite `apply`: the time from before BEGIN to after
            // COMMIT, in nanoseconds, written after the commit.
            let nanos = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
            self.conn
                .execute(
                    &format!("\n    UPDATE {table}\n    SET execution_time = ?1\n    WHERE version = ?2\n                "),
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

/// golang-migrate's `SetVersion` body (`database/sqlite3/sqlite3.go`): its
/// table holds one row.
fn set_version(conn: &Connection, table: &str, version: i64, dirty: bool) -> rusqlite::Result<()> {
    conn.execute(&format!("DELETE FROM {table}"), [])?;
    conn.execute(
        &format!("INSERT INTO {table} (version, dirty) VALUES (?, ?)"),
        params![version, dirty],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_of_every_statement_is_stepped_as_sqlite3_exec_does() {
        let conn = Connection::open_in_memory().unwrap();
        run_script(&conn, "CREATE TABLE t (x); INSERT INTO t VALUES (1), (2);").unwrap();
        // The second row overflows: stepping only the first would miss it.
        let err = run_script(
            &conn,
            "SELECT CASE WHEN x = 2 THEN abs(-9223372036854775808) ELSE 1 END FROM t; INSERT INTO t VALUES (3);",
        )
        .unwrap_err();
        assert!(err.to_string().contains("integer overflow"), "{err}");
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2, "nothing after the failing statement ran");
        assert!(conn
            .execute_batch(
                "SELECT CASE WHEN x = 2 THEN abs(-9223372036854775808) ELSE 1 END FROM t"
            )
            .is_ok());
    }
}
