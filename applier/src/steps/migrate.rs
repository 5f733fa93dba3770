//! The migrate step: SQL migrations, each in its own transaction, recorded in
//! the database it changed, in a table `airlock_migrations` (version, name,
//! SHA-256, time, bundle version; docs/SITE.md, "The `airlock_migrations`
//! table"). A recorded migration whose SHA-256 differs from the bundle's is
//! an error: what ran is not what the bundle says ran.

use std::path::Path;
use std::time::Duration;

use airlock_formats::{FileEntry, Manifest, MigrationInfo};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension as _};

use crate::error::{MigrationRef, StepError};

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS airlock_migrations (
    version TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    applied_at INTEGER NOT NULL,
    bundle_version TEXT NOT NULL
)";

fn recorded(conn: &Connection, version: &str) -> rusqlite::Result<Option<String>> {
    let has_table: bool = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'airlock_migrations'",
            [],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if !has_table {
        return Ok(None);
    }
    conn.query_row(
        "SELECT sha256 FROM airlock_migrations WHERE version = ?1",
        params![version],
        |r| r.get(0),
    )
    .optional()
}

fn migration_ref(
    database: &str,
    path: &Path,
    entry: &FileEntry,
    info: &MigrationInfo,
) -> Box<MigrationRef> {
    Box::new(MigrationRef {
        database: database.into(),
        path: path.into(),
        version: info.version.clone(),
        description: info.description.clone(),
        file: entry.path.to_string(),
    })
}

fn changed(
    database: &str,
    path: &Path,
    entry: &FileEntry,
    info: &MigrationInfo,
    recorded: String,
) -> StepError {
    StepError::MigrationChanged {
        migration: migration_ref(database, path, entry, info),
        recorded,
        expected: entry.sha256,
    }
}

/// The `up` migrations of `database` in `manifest` that `path` has not
/// recorded yet, in order.
///
/// # Errors
/// [`StepError::MigrationChanged`] when one was recorded with another
/// SHA-256; [`StepError::Sqlite`] when the database cannot be read.
pub fn pending<'a>(
    path: &Path,
    database: &'a str,
    manifest: &'a Manifest,
) -> Result<Vec<(&'a FileEntry, &'a MigrationInfo)>, StepError> {
    let fail = |source| StepError::Sqlite {
        what: format!("reading database `{database}`"),
        path: path.into(),
        source,
    };
    let conn = if fs_err::exists(path)? {
        Some(Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(fail)?)
    } else {
        None
    };
    let mut out = Vec::new();
    for (entry, info) in manifest.migrations_for(database) {
        let prior = match &conn {
            Some(c) => recorded(c, &info.version).map_err(fail)?,
            None => None,
        };
        match prior {
            None => out.push((entry, info)),
            Some(sha) if sha == entry.sha256.to_hex() => {}
            Some(sha) => return Err(changed(database, path, entry, info, sha)),
        }
    }
    Ok(out)
}

/// Runs one migration's `sql` in a transaction and records it in the same one.
/// A migration already recorded with the same SHA-256 (a retried step) is
/// not run again.
///
/// # Errors
/// [`StepError::Migration`] with SQLite's error; the transaction is rolled back.
pub fn apply_one(
    path: &Path,
    database: &str,
    entry: &FileEntry,
    info: &MigrationInfo,
    sql: &str,
    bundle_version: &str,
) -> Result<(), StepError> {
    let fail = |source| StepError::Migration {
        migration: migration_ref(database, path, entry, info),
        source,
    };
    let mut conn = Connection::open(path).map_err(fail)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(fail)?;
    conn.execute_batch(CREATE_TABLE).map_err(fail)?;
    let tx = conn.transaction().map_err(fail)?;
    if let Some(sha) = recorded(&tx, &info.version).map_err(fail)? {
        return if sha == entry.sha256.to_hex() {
            Ok(())
        } else {
            Err(changed(database, path, entry, info, sha))
        };
    }
    tx.execute_batch(sql).map_err(fail)?;
    tx.execute(
        "INSERT INTO airlock_migrations (version, name, sha256, applied_at, bundle_version) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![info.version, info.description, entry.sha256.to_hex(), crate::state::now(), bundle_version],
    )
    .map_err(fail)?;
    tx.commit().map_err(fail)
}
