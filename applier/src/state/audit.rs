//! The append-only, hash-chained audit log (docs/SITE.md, "The state
//! database"): every `verify`, `apply`, `resume` and `rollback` of this node,
//! with the OS user, the bundle's SHA-256 and signers, and the outcome.

use rusqlite::{params, OptionalExtension as _};

use super::{now, os_user, text_enum, ApplyOutcome, State, StateError};

/// File beside the state database holding the id and hash of the newest audit
/// entry, so that deleting the newest entries is detected too.
pub const AUDIT_HEAD: &str = "audit.head";

/// `prev_hash` of the first audit entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

text_enum! {
    /// The command an audit entry records.
    pub enum AuditAction {
        /// `airlock-apply verify`.
        Verify = "verify",
        /// `airlock-apply apply`.
        Apply = "apply",
        /// `airlock-apply resume`.
        Resume = "resume",
        /// `airlock-apply rollback`.
        Rollback = "rollback",
        /// A rule an option let a bundle break (`--allow-expired`,
        /// `--trust-bundle-time`); the entry's error text says which.
        Override = "override",
        /// `airlock-apply trust install`, or a trust update a bundle carried.
        TrustInstall = "trust-install",
    }
}

/// One audit entry to append.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// The command.
    pub action: AuditAction,
    /// Bundle file.
    pub bundle: Option<String>,
    /// Bundle version.
    pub version: Option<String>,
    /// SHA-256 of the bundle file.
    pub bundle_sha256: Option<String>,
    /// Key ids that counted, comma-separated.
    pub signers: Option<String>,
    /// How it ended (`verify`: `ok`, `refused` or `failed`).
    pub outcome: ApplyOutcome,
    /// Error text.
    pub error: Option<String>,
}

impl Default for AuditEntry {
    fn default() -> Self {
        Self {
            action: AuditAction::Apply,
            bundle: None,
            version: None,
            bundle_sha256: None,
            signers: None,
            outcome: ApplyOutcome::Ok,
            error: None,
        }
    }
}

/// One audit entry as stored: the exact text, since its hash covers it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AuditRow {
    /// Sequence number, from 1 with no gaps.
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// OS user.
    pub user: String,
    /// What was done (an [`AuditAction`]).
    pub action: String,
    /// Bundle file.
    pub bundle: Option<String>,
    /// Bundle version.
    pub version: Option<String>,
    /// SHA-256 of the bundle file.
    pub bundle_sha256: Option<String>,
    /// Key ids that counted.
    pub signers: Option<String>,
    /// Outcome (an [`ApplyOutcome`]).
    pub outcome: String,
    /// Error text.
    pub error: Option<String>,
    /// Hash of the entry before (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over this entry's fields and `prev_hash`.
    pub hash: String,
}

impl AuditRow {
    /// The hash this row should carry: SHA-256 of the compact JSON array of
    /// its fields, `prev_hash` last.
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

/// Longest error text an audit entry keeps, in characters.
const MAX_ERROR_CHARS: usize = 4096;

/// An error text as the audit log keeps it: control characters escaped (the
/// newlines of a command's output too) and at most [`MAX_ERROR_CHARS`].
fn bounded(error: &str) -> String {
    airlock_formats::shown::shown_at_most(error, MAX_ERROR_CHARS)
}

impl State {
    /// Appends an audit entry with the time and OS user, chained by hash to
    /// the one before, and records the new head in `audit.head`.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn audit(&self, entry: &AuditEntry) -> Result<(), StateError> {
        self.audit_at(entry, now())
    }

    /// [`State::audit`] with the time `at` (Unix seconds): an apply's entry
    /// carries the same time as its `applies.finished_at`, so `status` and
    /// `history` show one time for it.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn audit_at(&self, entry: &AuditEntry, at: i64) -> Result<(), StateError> {
        // Read the newest entry and append after it in one write
        // transaction, so two writers (a `verify` beside an `apply`) never
        // chain to the same entry. The head is replaced inside it too:
        // writers take turns on the database's write lock, so the head names
        // the newest entry committed (only a crash between the head and the
        // commit leaves it naming an entry the log does not have).
        self.exec("BEGIN IMMEDIATE")?;
        let written = self.append_audit(entry, at).and_then(|(id, hash)| {
            airlock_formats::durable::write_bytes_atomic(
                &self.dir.join(AUDIT_HEAD),
                0o600,
                format!("{id} {hash}\n").as_bytes(),
            )
            .map_err(StateError::from)
        });
        match written {
            Ok(()) => self.exec("COMMIT"),
            Err(e) => {
                let _ = self.exec("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Inserts `entry` after the newest one; returns its id and hash.
    fn append_audit(&self, entry: &AuditEntry, at: i64) -> Result<(i64, String), StateError> {
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
            at,
            user: os_user(),
            action: entry.action.as_str().into(),
            bundle: entry.bundle.clone(),
            version: entry.version.clone(),
            bundle_sha256: entry.bundle_sha256.clone(),
            signers: entry.signers.clone(),
            outcome: entry.outcome.as_str().into(),
            error: entry.error.as_deref().map(bounded),
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
        Ok((row.id, row.hash))
    }

    /// Audit entries, oldest first.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn history(&self) -> Result<Vec<AuditRow>, StateError> {
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
    /// names. Returns the number of entries checked, or what does not match,
    /// first bad entry first. It says what it finds, not who did it: a hash
    /// chain proves that entries no longer match, not how.
    ///
    /// # Errors
    /// [`StateError`] when the database or `audit.head` cannot be read (a
    /// permission problem is an error, not a finding).
    pub fn check_history(&self) -> Result<Result<usize, Vec<String>>, StateError> {
        let rows = self.history()?;
        let mut problems = Vec::new();
        let mut prev = GENESIS.to_owned();
        // Entries written before the schema upgrade carry no hash; the chain
        // starts after them.
        let legacy = rows.iter().take_while(|r| r.hash.is_empty()).count();
        for (i, row) in rows.iter().enumerate() {
            let expected_id = i64::try_from(i).unwrap_or(i64::MAX).saturating_add(1);
            if row.id != expected_id {
                problems.push(format!(
                    "entry {expected_id} is missing (entry {} is in its place)",
                    row.id
                ));
            }
            if i < legacy {
                prev = String::new();
                continue;
            }
            if row.prev_hash != prev {
                problems.push(format!(
                    "entry {}'s prev_hash does not match the hash of the entry before it (an entry before it was removed or changed)",
                    row.id
                ));
            }
            if row.compute_hash() != row.hash {
                problems.push(format!(
                    "entry {}'s hash does not match its content (it was changed after it was written)",
                    row.id
                ));
            }
            prev = row.hash.clone();
        }
        let head_path = self.dir.join(AUDIT_HEAD);
        match fs_err::read_to_string(&head_path) {
            Ok(text) => {
                let mut parts = text.split_whitespace();
                let (id, hash) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let last = rows.last().map(|r| (r.id.to_string(), r.hash.as_str()));
                if last.as_ref().map(|(i, h)| (i.as_str(), *h)) != Some((id, hash)) {
                    problems.push(format!(
                        "the newest entry should be {id} with hash {hash} (from `{}`), but the log ends at {}: entries after it are missing or changed",
                        head_path.display(),
                        last.map_or_else(|| "nothing".to_string(), |(i, _)| format!("entry {i}"))
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !rows.is_empty() {
                    problems.push(format!("`{}` is missing", head_path.display()));
                }
            }
            Err(e) => return Err(StateError::Io(e)),
        }
        Ok(if problems.is_empty() {
            Ok(rows.len())
        } else {
            Err(problems)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_refuses_edits_and_the_check_finds_changed_and_deleted_entries() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        for outcome in [ApplyOutcome::Ok, ApplyOutcome::Refused, ApplyOutcome::Ok] {
            state
                .audit(&AuditEntry {
                    action: AuditAction::Verify,
                    outcome,
                    ..AuditEntry::default()
                })
                .unwrap();
        }
        assert!(state.conn.execute("DELETE FROM audit", []).is_err());
        assert!(state
            .conn
            .execute("UPDATE audit SET outcome = 'x'", [])
            .is_err());
        assert_eq!(state.check_history().unwrap(), Ok(3));
        // Someone drops the guard and edits a row.
        state
            .exec("DROP TRIGGER audit_no_update; UPDATE audit SET outcome = 'ok' WHERE id = 2;")
            .unwrap();
        let problems = state.check_history().unwrap().unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("entry 2's hash does not match its content")),
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
}
