//! The applier's own state, an SQLite database in the state folder
//! (`STATE_DIR/airlock-state.sqlite`): the installed version, each apply with
//! its journal of steps, and an append-only audit log.
//!
//! The database runs with `synchronous = FULL` (SQLite docs, "PRAGMA
//! synchronous"), so a journal row is on disk before the step it announces acts.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension as _};
use semver::Version;

use crate::error::ApplyError;

/// File name of the state database inside the state folder.
pub const STATE_DB: &str = "airlock-state.sqlite";

/// File beside the state database holding the id and hash of the newest audit
/// entry, so that deleting the newest entries is detected too.
pub const AUDIT_HEAD: &str = "audit.head";

/// `prev_hash` of the first audit entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS installed (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    installed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS applies (
    id INTEGER PRIMARY KEY,
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
    step TEXT NOT NULL,
    detail TEXT NOT NULL,
    at INTEGER NOT NULL,
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
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The OS user running the applier (`$USER`, `$LOGNAME`, else `uid N`).
pub fn os_user() -> String {
    use std::os::unix::fs::MetadataExt as _;
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            std::fs::metadata("/proc/self")
                .map(|m| format!("uid {}", m.uid()))
                .unwrap_or_else(|_| "unknown".into())
        })
}

/// The installed release as recorded.
#[derive(Debug, Clone)]
pub struct Installed {
    /// Bundle name.
    pub name: String,
    /// Version.
    pub version: Version,
    /// SHA-256 of the bundle file that installed it.
    pub bundle_sha256: String,
    /// When, Unix seconds.
    pub installed_at: i64,
}

/// One audit entry to append.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry {
    /// `verify`, `apply`, `rollback`, ...
    pub action: String,
    /// Bundle file name.
    pub bundle: Option<String>,
    /// Bundle version.
    pub version: Option<String>,
    /// SHA-256 of the bundle file.
    pub bundle_sha256: Option<String>,
    /// Key ids that counted, comma-separated.
    pub signers: Option<String>,
    /// `ok`, `refused`, `rolled-back`, `needs-operator`, `failed`.
    pub outcome: String,
    /// Error text.
    pub error: Option<String>,
}

/// One audit entry as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRow {
    /// Sequence number, from 1 with no gaps.
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// OS user.
    pub user: String,
    /// What was done.
    pub action: String,
    /// Bundle file.
    pub bundle: Option<String>,
    /// Bundle version.
    pub version: Option<String>,
    /// SHA-256 of the bundle file.
    pub bundle_sha256: Option<String>,
    /// Key ids that counted.
    pub signers: Option<String>,
    /// Outcome.
    pub outcome: String,
    /// Error text.
    pub error: Option<String>,
    /// Hash of the entry before (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over this entry's fields and `prev_hash`.
    pub hash: String,
}

impl AuditRow {
    /// The hash this row should carry: SHA-256 of the JSON array of its
    /// fields, `prev_hash` last.
    pub fn compute_hash(&self) -> String {
        let fields = serde_json::json!([
            self.id,
            self.at,
            self.user,
            self.action,
            self.bundle,
            self.version,
            self.bundle_sha256,
            self.signers,
            self.outcome,
            self.error,
            self.prev_hash
        ]);
        airlock_formats::Sha256Digest::of(fields.to_string().as_bytes()).to_hex()
    }
}

/// What an apply is about, recorded when it starts so that `resume` can finish
/// or undo it without the bundle.
#[derive(Debug, Clone)]
pub struct NewApply<'a> {
    /// Bundle file as given.
    pub bundle: &'a str,
    /// Bundle name.
    pub name: &'a str,
    /// Installed version.
    pub from: &'a str,
    /// Version being applied.
    pub to: &'a str,
    /// The signed manifest bytes.
    pub manifest_json: &'a str,
    /// Key ids that counted.
    pub signers: &'a str,
}

/// A past apply, for `status`.
#[derive(Debug, Clone)]
pub struct ApplyRecord {
    /// Id.
    pub id: i64,
    /// Bundle file name.
    pub bundle: String,
    /// From version.
    pub from_version: String,
    /// To version.
    pub to_version: String,
    /// Start, Unix seconds.
    pub started_at: i64,
    /// End, Unix seconds.
    pub finished_at: Option<i64>,
    /// `running`, `ok`, `refused`, `rolled-back`, `needs-operator`, `failed`.
    pub outcome: String,
    /// Backup folder.
    pub backup_dir: Option<String>,
    /// Error.
    pub error: Option<String>,
    /// The manifest it applied.
    pub manifest_json: String,
    /// Key ids that counted.
    pub signers: String,
    /// SHA-256 of the bundle file.
    pub bundle_sha256: String,
}

/// A rolling upgrade, as the coordinator records it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RolloutRecord {
    /// Id.
    pub id: i64,
    /// Bundle file on the coordinator.
    pub bundle: String,
    /// Bundle name.
    pub name: String,
    /// Version being rolled out.
    pub version: String,
    /// Start, Unix seconds.
    pub started_at: i64,
    /// End, Unix seconds.
    pub finished_at: Option<i64>,
    /// `running`, `ok`, `stopped` (a node failed; `resume` continues), `refused`.
    pub outcome: String,
    /// Why it stopped.
    pub error: Option<String>,
}

/// One node of a rollout.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RolloutNode {
    /// Member name.
    pub node: String,
    /// Position in the cluster profile.
    pub position: i64,
    /// Version it runs, as last seen.
    pub version: Option<String>,
    /// `pending`, `verified`, `upgrading`, `upgraded`, `rolled-back`, `failed`.
    pub state: String,
    /// Last step seen.
    pub step: String,
    /// How long its service was down, milliseconds.
    pub stopped_ms: Option<i64>,
    /// How long its apply took, milliseconds.
    pub apply_ms: Option<i64>,
    /// What failed.
    pub error: Option<String>,
}

/// A change to a rollout node's row; `None` fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct NodeUpdate<'a> {
    /// New state.
    pub state: Option<&'a str>,
    /// New step.
    pub step: Option<&'a str>,
    /// Version seen.
    pub version: Option<&'a str>,
    /// Service down time, ms.
    pub stopped_ms: Option<i64>,
    /// Apply time, ms.
    pub apply_ms: Option<i64>,
    /// Error.
    pub error: Option<&'a str>,
}

/// One journal row.
#[derive(Debug, Clone)]
pub struct JournalRow {
    /// Order within the apply.
    pub seq: i64,
    /// Step name.
    pub step: String,
    /// Detail.
    pub detail: String,
}

const APPLY_COLUMNS: &str = "id, bundle, from_version, to_version, started_at, finished_at, outcome, backup_dir, error, manifest_json, signers, bundle_sha256";

fn apply_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApplyRecord> {
    Ok(ApplyRecord {
        id: r.get(0)?,
        bundle: r.get(1)?,
        from_version: r.get(2)?,
        to_version: r.get(3)?,
        started_at: r.get(4)?,
        finished_at: r.get(5)?,
        outcome: r.get(6)?,
        backup_dir: r.get(7)?,
        error: r.get(8)?,
        manifest_json: r.get(9)?,
        signers: r.get(10)?,
        bundle_sha256: r.get(11)?,
    })
}

/// The open state database.
pub struct State {
    conn: Connection,
    path: PathBuf,
    dir: PathBuf,
}

impl State {
    /// Opens (creating) the state database in `state_dir`.
    ///
    /// # Errors
    /// [`ApplyError::State`] naming the file.
    pub fn open(state_dir: &Path) -> Result<Self, ApplyError> {
        std::fs::create_dir_all(state_dir).map_err(ApplyError::io(format!(
            "creating state folder `{}`",
            state_dir.display()
        )))?;
        let path = state_dir.join(STATE_DB);
        let conn = Connection::open(&path).map_err(|e| ApplyError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let state = Self {
            conn,
            path,
            dir: state_dir.to_owned(),
        };
        state.exec("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;")?;
        state.exec(SCHEMA)?;
        state.upgrade_schema()?;
        Ok(state)
    }

    /// Opens the state database only if it exists (read-only use: `verify`, `status`).
    ///
    /// # Errors
    /// [`ApplyError::State`] naming the file.
    pub fn open_existing(state_dir: &Path) -> Result<Option<Self>, ApplyError> {
        if state_dir.join(STATE_DB).exists() {
            Self::open(state_dir).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Brings a state database written by airlock 0.1's first slice (schema
    /// version 0) to the current schema (version 1): the columns `resume` and
    /// the audit chain need. Existing audit rows get no hash; `history --check`
    /// reports them.
    fn upgrade_schema(&self) -> Result<(), ApplyError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if version >= 1 {
            return Ok(());
        }
        // One writer at a time: a second process waits, then finds the columns.
        self.exec("BEGIN IMMEDIATE")?;
        let result = self.add_columns();
        self.exec(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
        result
    }

    fn add_columns(&self) -> Result<(), ApplyError> {
        let has = |table: &str, column: &str| -> Result<bool, ApplyError> {
            self.conn
                .query_row(
                    &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                    params![column],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n > 0)
                .map_err(|e| self.err(e))
        };
        for (table, column, ddl) in [
            (
                "applies",
                "manifest_json",
                "ALTER TABLE applies ADD COLUMN manifest_json TEXT NOT NULL DEFAULT ''",
            ),
            (
                "applies",
                "signers",
                "ALTER TABLE applies ADD COLUMN signers TEXT NOT NULL DEFAULT ''",
            ),
            (
                "audit",
                "prev_hash",
                "ALTER TABLE audit ADD COLUMN prev_hash TEXT NOT NULL DEFAULT ''",
            ),
            (
                "audit",
                "hash",
                "ALTER TABLE audit ADD COLUMN hash TEXT NOT NULL DEFAULT ''",
            ),
        ] {
            if !has(table, column)? {
                self.exec(ddl)?;
            }
        }
        self.exec("PRAGMA user_version = 1")
    }

    fn err(&self, e: rusqlite::Error) -> ApplyError {
        ApplyError::State {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    fn exec(&self, sql: &str) -> Result<(), ApplyError> {
        self.conn.execute_batch(sql).map_err(|e| self.err(e))
    }

    /// The installed release, if airlock installed one.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn installed(&self) -> Result<Option<Installed>, ApplyError> {
        let row = self
            .conn
            .query_row(
                "SELECT name, version, bundle_sha256, installed_at FROM installed WHERE id = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.err(e))?;
        row.map(|(name, version, bundle_sha256, installed_at)| {
            let version = Version::parse(&version).map_err(|e| ApplyError::State {
                path: self.path.clone(),
                reason: format!("installed version `{version}` is not SemVer: {e}"),
            })?;
            Ok(Installed {
                name,
                version,
                bundle_sha256,
                installed_at,
            })
        })
        .transpose()
    }

    /// Starts an apply record; returns its id.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn begin_apply(&self, new: &NewApply<'_>) -> Result<i64, ApplyError> {
        self.conn
            .execute(
                "INSERT INTO applies (bundle, bundle_sha256, name, from_version, to_version, started_at, manifest_json, signers)
                 VALUES (?1, '', ?2, ?3, ?4, ?5, ?6, ?7)",
                params![new.bundle, new.name, new.from, new.to, now(), new.manifest_json, new.signers],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records the SHA-256 of the bundle file an apply staged.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn set_bundle_sha256(&self, apply_id: i64, sha256: &str) -> Result<(), ApplyError> {
        self.conn
            .execute(
                "UPDATE applies SET bundle_sha256 = ?1 WHERE id = ?2",
                params![sha256, apply_id],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Records the backup folder of an apply.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn set_backup_dir(&self, apply_id: i64, dir: &Path) -> Result<(), ApplyError> {
        self.conn
            .execute(
                "UPDATE applies SET backup_dir = ?1 WHERE id = ?2",
                params![dir.to_string_lossy(), apply_id],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Appends a journal row (durable before it returns) announcing `step`.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn journal(&self, apply_id: i64, step: &str, detail: &str) -> Result<(), ApplyError> {
        self.conn
            .execute(
                "INSERT INTO journal (apply_id, seq, step, detail, at)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM journal WHERE apply_id = ?1), ?2, ?3, ?4)",
                params![apply_id, step, detail, now()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Ends an apply with `outcome`; with `installed` the new version is
    /// recorded in the same transaction.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn finish_apply(
        &mut self,
        apply_id: i64,
        outcome: &str,
        error: Option<&str>,
        installed: Option<(&str, &Version, &str)>,
    ) -> Result<(), ApplyError> {
        let path = self.path.clone();
        let err = |e: rusqlite::Error| ApplyError::State {
            path: path.clone(),
            reason: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute(
            "UPDATE applies SET finished_at = ?1, outcome = ?2, error = ?3 WHERE id = ?4",
            params![now(), outcome, error, apply_id],
        )
        .map_err(err)?;
        if let Some((name, version, sha)) = installed {
            tx.execute(
                "INSERT INTO installed (id, name, version, bundle_sha256, installed_at) VALUES (1, ?1, ?2, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET name = excluded.name, version = excluded.version,
                   bundle_sha256 = excluded.bundle_sha256, installed_at = excluded.installed_at",
                params![name, version.to_string(), sha, now()],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Ends an apply that installed nothing, with `outcome` and `error`.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn finish_apply_simple(
        &mut self,
        apply_id: i64,
        outcome: &str,
        error: &str,
    ) -> Result<(), ApplyError> {
        self.finish_apply(apply_id, outcome, Some(error), None)
    }

    /// Appends an audit entry with the time and OS user, chained by hash to
    /// the one before, and records the new head in `audit.head`.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn audit(&self, entry: &AuditEntry) -> Result<(), ApplyError> {
        let last: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let (id, prev_hash) = match last {
            Some((id, hash)) => (id + 1, hash),
            None => (1, GENESIS.to_owned()),
        };
        let mut row = AuditRow {
            id,
            at: now(),
            user: os_user(),
            action: entry.action.clone(),
            bundle: entry.bundle.clone(),
            version: entry.version.clone(),
            bundle_sha256: entry.bundle_sha256.clone(),
            signers: entry.signers.clone(),
            outcome: entry.outcome.clone(),
            error: entry.error.clone(),
            prev_hash,
            hash: String::new(),
        };
        row.hash = row.compute_hash();
        self.conn
            .execute(
                "INSERT INTO audit (id, at, user, action, bundle, version, bundle_sha256, signers, outcome, error, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    row.id,
                    row.at,
                    row.user,
                    row.action,
                    row.bundle,
                    row.version,
                    row.bundle_sha256,
                    row.signers,
                    row.outcome,
                    row.error,
                    row.prev_hash,
                    row.hash
                ],
            )
            .map_err(|e| self.err(e))?;
        airlock_formats::durable::write_bytes_atomic(
            &self.dir.join(AUDIT_HEAD),
            0o600,
            format!("{} {}\n", row.id, row.hash).as_bytes(),
        )?;
        Ok(())
    }

    /// Audit entries, oldest first.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn history(&self) -> Result<Vec<AuditRow>, ApplyError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, at, user, action, bundle, version, bundle_sha256, signers, outcome, error, prev_hash, hash
                 FROM audit ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(AuditRow {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    user: r.get(2)?,
                    action: r.get(3)?,
                    bundle: r.get(4)?,
                    version: r.get(5)?,
                    bundle_sha256: r.get(6)?,
                    signers: r.get(7)?,
                    outcome: r.get(8)?,
                    error: r.get(9)?,
                    prev_hash: r.get(10)?,
                    hash: r.get(11)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Checks the audit chain: ids from 1 without gaps, each hash right, each
    /// `prev_hash` the hash before, and the newest entry the one `audit.head`
    /// names. Returns the number of entries checked, or every problem found.
    ///
    /// # Errors
    /// [`ApplyError::State`] when the database cannot be read.
    pub fn check_history(&self) -> Result<Result<usize, Vec<String>>, ApplyError> {
        let rows = self.history()?;
        let mut problems = Vec::new();
        let mut prev = GENESIS.to_owned();
        // Entries written before the schema upgrade carry no hash; the chain
        // starts after them.
        let legacy = rows.iter().take_while(|r| r.hash.is_empty()).count();
        for (i, row) in rows.iter().enumerate() {
            let expected_id = i as i64 + 1;
            if row.id != expected_id {
                problems.push(format!(
                    "entry {expected_id} is missing (found entry {} in its place)",
                    row.id
                ));
            }
            if i < legacy {
                prev = String::new();
                continue;
            }
            if row.prev_hash != prev {
                problems.push(format!("entry {} does not follow the entry before it: an entry before it was deleted or changed", row.id));
            }
            if row.compute_hash() != row.hash {
                problems.push(format!("entry {} was changed after it was written", row.id));
            }
            prev = row.hash.clone();
        }
        let head_path = self.dir.join(AUDIT_HEAD);
        match std::fs::read_to_string(&head_path) {
            Ok(text) => {
                let mut parts = text.split_whitespace();
                let (id, hash) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let last = rows.last().map(|r| (r.id.to_string(), r.hash.as_str()));
                if last.as_ref().map(|(i, h)| (i.as_str(), *h)) != Some((id, hash)) {
                    problems.push(format!(
                        "the newest entry should be {id} with hash {hash} (from `{}`), but the log ends at {}: entries were deleted or changed",
                        head_path.display(),
                        last.map_or_else(|| "nothing".to_string(), |(i, _)| format!("entry {i}"))
                    ));
                }
            }
            Err(_) if rows.is_empty() => {}
            Err(e) => problems.push(format!("cannot read `{}`: {e}", head_path.display())),
        }
        Ok(if problems.is_empty() {
            Ok(rows.len())
        } else {
            Err(problems)
        })
    }

    /// The apply that was interrupted (still `running`), if any. Only
    /// meaningful while holding the node's lock.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn interrupted(&self) -> Result<Option<ApplyRecord>, ApplyError> {
        self.conn
            .query_row(
                &format!("SELECT {APPLY_COLUMNS} FROM applies WHERE outcome = 'running' ORDER BY id DESC LIMIT 1"),
                [],
                apply_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The journal of an apply, in order.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn journal_rows(&self, apply_id: i64) -> Result<Vec<JournalRow>, ApplyError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, step, detail FROM journal WHERE apply_id = ?1 ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![apply_id], |r| {
                Ok(JournalRow {
                    seq: r.get(0)?,
                    step: r.get(1)?,
                    detail: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Starts a rollout record with its nodes, all `pending`.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn begin_rollout(
        &self,
        bundle: &str,
        name: &str,
        version: &str,
        nodes: &[String],
    ) -> Result<i64, ApplyError> {
        self.conn
            .execute(
                "INSERT INTO rollouts (bundle, name, version, started_at) VALUES (?1, ?2, ?3, ?4)",
                params![bundle, name, version, now()],
            )
            .map_err(|e| self.err(e))?;
        let id = self.conn.last_insert_rowid();
        for (i, node) in nodes.iter().enumerate() {
            self.conn
                .execute(
                    "INSERT INTO rollout_nodes (rollout_id, node, position, state, updated_at) VALUES (?1, ?2, ?3, 'pending', ?4)",
                    params![id, node, i as i64, now()],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(id)
    }

    /// Updates a rollout node's row.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn update_rollout_node(
        &self,
        rollout: i64,
        node: &str,
        u: &NodeUpdate<'_>,
    ) -> Result<(), ApplyError> {
        self.conn
            .execute(
                "UPDATE rollout_nodes SET state = COALESCE(?3, state), step = COALESCE(?4, step),
                   version = COALESCE(?5, version), stopped_ms = COALESCE(?6, stopped_ms),
                   apply_ms = COALESCE(?7, apply_ms), error = ?8, updated_at = ?9
                 WHERE rollout_id = ?1 AND node = ?2",
                params![
                    rollout,
                    node,
                    u.state,
                    u.step,
                    u.version,
                    u.stopped_ms,
                    u.apply_ms,
                    u.error,
                    now()
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Ends (or pauses, with `stopped`) a rollout.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn finish_rollout(
        &self,
        rollout: i64,
        outcome: &str,
        error: Option<&str>,
    ) -> Result<(), ApplyError> {
        self.conn
            .execute(
                "UPDATE rollouts SET outcome = ?2, error = ?3, finished_at = ?4 WHERE id = ?1",
                params![rollout, outcome, error, now()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Adds the nodes of `nodes` a rollout does not list yet, as `pending`.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn add_rollout_nodes(&self, rollout: i64, nodes: &[String]) -> Result<(), ApplyError> {
        for (i, node) in nodes.iter().enumerate() {
            self.conn
                .execute(
                    "INSERT OR IGNORE INTO rollout_nodes (rollout_id, node, position, state, updated_at) VALUES (?1, ?2, ?3, 'pending', ?4)",
                    params![rollout, node, i as i64, now()],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Marks a stopped rollout as running again (for `resume`).
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn reopen_rollout(&self, rollout: i64) -> Result<(), ApplyError> {
        self.finish_rollout(rollout, "running", None)
    }

    /// The newest rollout.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn latest_rollout(&self) -> Result<Option<RolloutRecord>, ApplyError> {
        self.conn
            .query_row(
                "SELECT id, bundle, name, version, started_at, finished_at, outcome, error FROM rollouts ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok(RolloutRecord {
                        id: r.get(0)?,
                        bundle: r.get(1)?,
                        name: r.get(2)?,
                        version: r.get(3)?,
                        started_at: r.get(4)?,
                        finished_at: r.get(5)?,
                        outcome: r.get(6)?,
                        error: r.get(7)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The nodes of a rollout, in profile order.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn rollout_nodes(&self, rollout: i64) -> Result<Vec<RolloutNode>, ApplyError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT node, position, version, state, step, stopped_ms, apply_ms, error
                 FROM rollout_nodes WHERE rollout_id = ?1 ORDER BY position",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![rollout], |r| {
                Ok(RolloutNode {
                    node: r.get(0)?,
                    position: r.get(1)?,
                    version: r.get(2)?,
                    state: r.get(3)?,
                    step: r.get(4)?,
                    stopped_ms: r.get(5)?,
                    apply_ms: r.get(6)?,
                    error: r.get(7)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// The most recent applies, newest first.
    ///
    /// # Errors
    /// [`ApplyError::State`].
    pub fn recent_applies(&self, limit: usize) -> Result<Vec<ApplyRecord>, ApplyError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {APPLY_COLUMNS} FROM applies ORDER BY id DESC LIMIT ?1"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![limit as i64], apply_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_applies_and_refuses_audit_edits() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(dir.path()).unwrap();
        assert!(state.installed().unwrap().is_none());
        let id = state
            .begin_apply(&NewApply {
                bundle: "b.airlock",
                name: "demo",
                from: "1.0.0",
                to: "1.1.0",
                manifest_json: "{}",
                signers: "",
            })
            .unwrap();
        assert_eq!(state.interrupted().unwrap().unwrap().id, id);
        state.journal(id, "lock", "").unwrap();
        state.journal(id, "stage", "").unwrap();
        state
            .finish_apply(id, "ok", None, Some(("demo", &Version::new(1, 1, 0), "00")))
            .unwrap();
        assert_eq!(
            state.installed().unwrap().unwrap().version,
            Version::new(1, 1, 0)
        );
        state
            .audit(&AuditEntry {
                action: "apply".into(),
                outcome: "ok".into(),
                ..Default::default()
            })
            .unwrap();
        assert!(state.conn.execute("DELETE FROM audit", []).is_err());
        assert!(state
            .conn
            .execute("UPDATE audit SET outcome = 'x'", [])
            .is_err());
        assert_eq!(state.recent_applies(5).unwrap()[0].outcome, "ok");
    }

    #[test]
    fn history_check_finds_changed_and_deleted_entries() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        for outcome in ["ok", "refused", "ok"] {
            state
                .audit(&AuditEntry {
                    action: "verify".into(),
                    outcome: outcome.into(),
                    ..Default::default()
                })
                .unwrap();
        }
        assert_eq!(state.check_history().unwrap(), Ok(3));
        // Someone drops the guard and edits a row.
        state
            .exec("DROP TRIGGER audit_no_update; UPDATE audit SET outcome = 'ok' WHERE id = 2;")
            .unwrap();
        let problems = state.check_history().unwrap().unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains("entry 2 was changed")),
            "{problems:?}"
        );
        // And deletes the newest one.
        state
            .exec("UPDATE audit SET outcome = 'refused' WHERE id = 2; DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE id = 3;")
            .unwrap();
        let problems = state.check_history().unwrap().unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("the newest entry should be 3")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_first_slice_state_database_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(STATE_DB)).unwrap();
        conn.execute_batch(
            "CREATE TABLE applies (id INTEGER PRIMARY KEY, bundle TEXT NOT NULL, bundle_sha256 TEXT NOT NULL,
               name TEXT NOT NULL, from_version TEXT NOT NULL, to_version TEXT NOT NULL, started_at INTEGER NOT NULL,
               finished_at INTEGER, outcome TEXT NOT NULL DEFAULT 'running', backup_dir TEXT, error TEXT);
             CREATE TABLE audit (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
               bundle TEXT, version TEXT, bundle_sha256 TEXT, signers TEXT, outcome TEXT NOT NULL, error TEXT);
             INSERT INTO audit (at, user, action, outcome) VALUES (1, 'op', 'apply', 'ok');",
        )
        .unwrap();
        drop(conn);
        let state = State::open(dir.path()).unwrap();
        state
            .audit(&AuditEntry {
                action: "verify".into(),
                outcome: "ok".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(state.check_history().unwrap(), Ok(2));
        let version: i64 = state
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 1);
        drop(state);
        State::open(dir.path()).unwrap();
    }
}
