//! The tables of the state database and the in-place upgrade of older ones
//! (docs/SITE.md, "Schema upgrade"). `PRAGMA user_version` is the schema
//! version: 0 for airlock's first slice, 1 once `resume` kept manifests and
//! the audit log was chained, 2 since the journal holds typed steps and undo
//! records, 3 since it keeps the highest time seen and the accepted trust
//! versions ([`CURRENT`]).

use rusqlite::params;

use super::{State, StateError};

/// The schema version this airlock writes.
pub const CURRENT: i64 = 3;

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS installed (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    installed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS applies (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL DEFAULT 'apply',
    rollback_of INTEGER REFERENCES applies(id),
    bundle TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    name TEXT NOT NULL,
    from_version TEXT NOT NULL,
    to_version TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    outcome TEXT NOT NULL DEFAULT 'running',
    backup_dir TEXT,
    error TEXT,
    manifest_json TEXT NOT NULL DEFAULT '',
    signers TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS journal (
    apply_id INTEGER NOT NULL REFERENCES applies(id),
    seq INTEGER NOT NULL,
    entry TEXT NOT NULL,
    undo TEXT,
    state TEXT NOT NULL,
    error TEXT,
    at INTEGER NOT NULL,
    finished_at INTEGER,
    PRIMARY KEY (apply_id, seq)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL,
    bundle TEXT,
    version TEXT,
    bundle_sha256 TEXT,
    signers TEXT,
    outcome TEXT NOT NULL,
    error TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY,
    bundle TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    outcome TEXT NOT NULL DEFAULT 'running',
    error TEXT
);
CREATE TABLE IF NOT EXISTS rollout_nodes (
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id),
    node TEXT NOT NULL,
    position INTEGER NOT NULL,
    version TEXT,
    state TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT '',
    stopped_ms INTEGER,
    apply_ms INTEGER,
    error TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, node)
);
CREATE TABLE IF NOT EXISTS clock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trust (
    version INTEGER PRIMARY KEY,
    document TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    signers TEXT NOT NULL,
    accepted_at INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

/// Name the journal of schema 1 keeps after the upgrade to 2: its rows are
/// free text that `resume` and `rollback` no longer read.
pub const LEGACY_JOURNAL: &str = "journal_v1";

/// Creates the tables of a new database, or upgrades an older one to
/// [`CURRENT`] in one transaction (a second process waits, then finds it done).
///
/// # Errors
/// [`StateError`].
pub(super) fn bring_up_to_date(state: &State) -> Result<(), StateError> {
    if version(state)? >= CURRENT {
        return Ok(());
    }
    state.exec("BEGIN IMMEDIATE")?;
    let result = upgrade(state);
    state.exec(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
    result
}

fn version(state: &State) -> Result<i64, StateError> {
    state
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| state.err(e))
}

fn has_table(state: &State, table: &str) -> Result<bool, StateError> {
    state
        .conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            params![table],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(|e| state.err(e))
}

fn has_column(state: &State, table: &str, column: &str) -> Result<bool, StateError> {
    state
        .conn
        .query_row(
            "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
            params![table, column],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(|e| state.err(e))
}

fn add_column(state: &State, table: &str, column: &str, ddl: &str) -> Result<(), StateError> {
    if has_table(state, table)? && !has_column(state, table, column)? {
        state.exec(&format!("ALTER TABLE {table} ADD COLUMN {column} {ddl}"))?;
    }
    Ok(())
}

fn upgrade(state: &State) -> Result<(), StateError> {
    // Read again inside the transaction: another process may have upgraded.
    let from = version(state)?;
    if from >= CURRENT {
        return Ok(());
    }
    if from < 1 {
        // Schema 0 -> 1: what `resume` and the audit chain need.
        add_column(
            state,
            "applies",
            "manifest_json",
            "TEXT NOT NULL DEFAULT ''",
        )?;
        add_column(state, "applies", "signers", "TEXT NOT NULL DEFAULT ''")?;
        add_column(state, "audit", "prev_hash", "TEXT NOT NULL DEFAULT ''")?;
        add_column(state, "audit", "hash", "TEXT NOT NULL DEFAULT ''")?;
    }
    // Schema 1 -> 2: typed journal entries with undo records; applies know
    // whether they are a `rollback` command and which apply it undid.
    if has_table(state, "journal")? && has_column(state, "journal", "step")? {
        state.exec(&format!("ALTER TABLE journal RENAME TO {LEGACY_JOURNAL}"))?;
    }
    add_column(state, "applies", "kind", "TEXT NOT NULL DEFAULT 'apply'")?;
    add_column(
        state,
        "applies",
        "rollback_of",
        "INTEGER REFERENCES applies(id)",
    )?;
    if has_table(state, "applies")? {
        state.exec(
            "UPDATE applies SET kind = 'rollback', rollback_of = CAST(substr(bundle, 14) AS INTEGER)
             WHERE bundle LIKE 'rollback of #%' AND kind = 'apply'",
        )?;
    }
    // Schema 2 -> 3: the tables `clock` and `trust`, which TABLES creates.
    state.exec(TABLES)?;
    state.exec(&format!("PRAGMA user_version = {CURRENT}"))
}

/// Whether apply `apply_id` has journal rows only in the schema-1 journal.
///
/// # Errors
/// [`StateError`].
pub(crate) fn has_legacy_journal(state: &State, apply_id: i64) -> Result<bool, StateError> {
    if !has_table(state, LEGACY_JOURNAL)? {
        return Ok(false);
    }
    state
        .conn
        .query_row(
            &format!("SELECT count(*) FROM {LEGACY_JOURNAL} WHERE apply_id = ?1"),
            params![apply_id],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(|e| state.err(e))
}

#[cfg(test)]
mod tests {
    use super::super::{ApplyOutcome, AuditAction, AuditEntry, STATE_DB};
    use super::*;
    use rusqlite::Connection;

    /// A state folder whose database an older airlock wrote with `sql`.
    fn written_by_an_older_airlock(sql: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        Connection::open(dir.path().join(STATE_DB))
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        dir
    }

    #[test]
    fn a_first_slice_database_is_upgraded_in_place() {
        let dir = written_by_an_older_airlock(
            "CREATE TABLE applies (id INTEGER PRIMARY KEY, bundle TEXT NOT NULL, bundle_sha256 TEXT NOT NULL,
               name TEXT NOT NULL, from_version TEXT NOT NULL, to_version TEXT NOT NULL, started_at INTEGER NOT NULL,
               finished_at INTEGER, outcome TEXT NOT NULL DEFAULT 'running', backup_dir TEXT, error TEXT);
             CREATE TABLE audit (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
               bundle TEXT, version TEXT, bundle_sha256 TEXT, signers TEXT, outcome TEXT NOT NULL, error TEXT);
             INSERT INTO audit (at, user, action, outcome) VALUES (1, 'op', 'apply', 'ok');",
        );
        let state = State::open(dir.path()).unwrap();
        state
            .audit(&AuditEntry {
                action: AuditAction::Verify,
                outcome: ApplyOutcome::Ok,
                ..AuditEntry::default()
            })
            .unwrap();
        assert_eq!(state.check_history().unwrap(), Ok(2));
        assert_eq!(version(&state).unwrap(), CURRENT);
        drop(state);
        State::open(dir.path()).unwrap();
    }

    #[test]
    fn a_schema_1_journal_is_kept_aside_and_rollbacks_are_marked() {
        let dir = written_by_an_older_airlock(
            "CREATE TABLE applies (id INTEGER PRIMARY KEY, bundle TEXT NOT NULL, bundle_sha256 TEXT NOT NULL,
               name TEXT NOT NULL, from_version TEXT NOT NULL, to_version TEXT NOT NULL, started_at INTEGER NOT NULL,
               finished_at INTEGER, outcome TEXT NOT NULL DEFAULT 'running', backup_dir TEXT, error TEXT,
               manifest_json TEXT NOT NULL DEFAULT '', signers TEXT NOT NULL DEFAULT '');
             CREATE TABLE journal (apply_id INTEGER NOT NULL, seq INTEGER NOT NULL, step TEXT NOT NULL,
               detail TEXT NOT NULL, at INTEGER NOT NULL, PRIMARY KEY (apply_id, seq));
             INSERT INTO applies (bundle, bundle_sha256, name, from_version, to_version, started_at, outcome)
               VALUES ('demo-1.1.0.airlock', '', 'demo', '1.0.0', '1.1.0', 1, 'ok'),
                      ('rollback of #1', '', 'rollback', '1.1.0', '1.0.0', 2, 'ok');
             INSERT INTO journal VALUES (1, 1, 'stage', '', 1);
             PRAGMA user_version = 1;",
        );
        let state = State::open(dir.path()).unwrap();
        assert!(has_legacy_journal(&state, 1).unwrap());
        assert!(state.journal(1).unwrap().is_empty());
        let rollback = state.get_apply(2).unwrap().unwrap();
        assert_eq!(rollback.kind, super::super::ApplyKind::Rollback);
        assert_eq!(rollback.rollback_of, Some(1));
        assert_eq!(state.last_completed_apply().unwrap().unwrap().id, 1);
    }
}
