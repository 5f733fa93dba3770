//! Step 7: SQL migrations, each in its own transaction, recorded in the
//! database it changed, in a table `airlock_migrations` (version, name,
//! SHA-256, time, bundle version). A recorded migration whose SHA-256 differs
//! from the bundle's is an error: what ran is not what the bundle says ran.

use std::path::Path;
use std::time::Duration;

use airlock_formats::{FileEntry, Manifest, MigrationInfo};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension as _};

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

/// The `up` migrations of `database` in `manifest` that `path` has not
/// recorded yet, in order.
///
/// # Errors
/// A message naming the database and migration when one was recorded with
/// another SHA-256, or when the database cannot be read.
pub fn pending<'a>(
    path: &Path,
    database: &'a str,
    manifest: &'a Manifest,
) -> Result<Vec<(&'a FileEntry, &'a MigrationInfo)>, String> {
    let conn = if path.exists() {
        Some(
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|e| format!("database `{database}` ({}): {e}", path.display()))?,
        )
    } else {
        None
    };
    let mut out = Vec::new();
    for (entry, info) in manifest.migrations_for(database) {
        let prior = match &conn {
            Some(c) => recorded(c, &info.version)
                .map_err(|e| format!("database `{database}` ({}): {e}", path.display()))?,
            None => None,
        };
        match prior {
            None => out.push((entry, info)),
            Some(sha) if sha == entry.sha256.to_hex() => {}
            Some(sha) => {
                return Err(format!(
                    "database `{database}` ({}) recorded migration {} `{}` with SHA-256 {sha}, but the bundle's is {}",
                    path.display(),
                    info.version,
                    info.description,
                    entry.sha256
                ))
            }
        }
    }
    Ok(out)
}

/// Read-only check that no applied migration changed.
///
/// # Errors
/// As [`pending`].
pub fn check_applied(path: &Path, database: &str, manifest: &Manifest) -> Result<(), String> {
    pending(path, database, manifest).map(|_| ())
}

/// Runs one migration's `sql` in a transaction and records it in the same one.
///
/// # Errors
/// A message naming the database and migration, with SQLite's error.
pub fn apply_one(
    path: &Path,
    database: &str,
    entry: &FileEntry,
    info: &MigrationInfo,
    sql: &str,
    bundle_version: &str,
) -> Result<(), String> {
    let fail = |e: rusqlite::Error| {
        format!(
            "migration {} `{}` ({}) on database `{database}` ({}): {e}",
            info.version,
            info.description,
            entry.path,
            path.display()
        )
    };
    let mut conn = Connection::open(path).map_err(fail)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(fail)?;
    conn.execute_batch(CREATE_TABLE).map_err(fail)?;
    let tx = conn.transaction().map_err(fail)?;
    if let Some(sha) = recorded(&tx, &info.version).map_err(fail)? {
        // Already ran (a retried step): fine if it is the same migration.
        return if sha == entry.sha256.to_hex() {
            Ok(())
        } else {
            Err(format!(
                "migration {} on database `{database}` was recorded with another SHA-256",
                info.version
            ))
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
