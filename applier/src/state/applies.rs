//! The `installed` and `applies` tables and each apply's journal
//! (docs/SITE.md, "The state database"). A journal row holds one
//! [`Entry`] (a step, an undo action, a resume, ...) as JSON, written and
//! synced before the entry acts, with its [`Undo`] record and how it ended.

use std::path::Path;

use rusqlite::{params, OptionalExtension as _};
use semver::Version;

use super::{now, text_enum, State, StateError};
use crate::transaction::journal::Entry;
use crate::transaction::undo::Undo;

text_enum! {
    /// What an `applies` row records.
    pub enum ApplyKind {
        /// `airlock-apply apply` of a bundle.
        Apply = "apply",
        /// `airlock-apply rollback`: the undo of an earlier apply.
        Rollback = "rollback",
    }
}

text_enum! {
    /// How an apply ended (`applies.outcome`, and the audit log's `outcome`).
    pub enum ApplyOutcome {
        /// Still running, or interrupted: `resume` finishes or undoes it.
        Running = "running",
        /// Completed.
        Ok = "ok",
        /// Verification refused the bundle; nothing changed.
        Refused = "refused",
        /// Failed before the service was stopped; nothing changed.
        Failed = "failed",
        /// Undone: the old version runs, healthy.
        RolledBack = "rolled-back",
        /// The undo did not complete: the operator must act.
        NeedsOperator = "needs-operator",
    }
}

text_enum! {
    /// How far a journal entry got.
    pub enum RowState {
        /// Announced; it may have acted, partly or wholly.
        Begun = "begun",
        /// It completed.
        Done = "done",
        /// It failed (the error is kept).
        Failed = "failed",
    }
}

/// The installed release as recorded.
#[derive(Debug, Clone)]
pub struct Installed {
    /// Bundle name.
    pub name: String,
    /// Version.
    pub version: Version,
    /// SHA-256 of the bundle file that installed it (empty after a `rollback`).
    pub bundle_sha256: String,
    /// When, Unix seconds.
    pub installed_at: i64,
}

/// What an apply is about, recorded when it starts so that `resume` and
/// `rollback` can finish or undo it without the bundle.
#[derive(Debug, Clone)]
pub struct NewApply<'a> {
    /// Apply or rollback.
    pub kind: ApplyKind,
    /// For a rollback: the apply it undoes.
    pub rollback_of: Option<i64>,
    /// Bundle file as given (`rollback of #ID` for a rollback).
    pub bundle: &'a str,
    /// Bundle name.
    pub name: &'a str,
    /// Installed version.
    pub from: &'a str,
    /// Version being installed.
    pub to: &'a str,
    /// The signed manifest bytes.
    pub manifest_json: &'a str,
    /// Key ids that counted, comma-separated.
    pub signers: &'a str,
}

/// One row of `applies`.
#[derive(Debug, Clone)]
pub struct ApplyRecord {
    /// Id.
    pub id: i64,
    /// Apply or rollback.
    pub kind: ApplyKind,
    /// For a rollback: the apply it undid.
    pub rollback_of: Option<i64>,
    /// Bundle file as given.
    pub bundle: String,
    /// Bundle name.
    pub name: String,
    /// From version.
    pub from_version: String,
    /// To version.
    pub to_version: String,
    /// Start, Unix seconds.
    pub started_at: i64,
    /// End, Unix seconds.
    pub finished_at: Option<i64>,
    /// How it ended.
    pub outcome: ApplyOutcome,
    /// Backup folder.
    pub backup_dir: Option<String>,
    /// Error.
    pub error: Option<String>,
    /// The manifest it applied.
    pub manifest_json: String,
    /// Key ids that counted.
    pub signers: String,
    /// SHA-256 of the bundle file, once staging verified it.
    pub bundle_sha256: String,
}

/// One journal row.
#[derive(Debug, Clone)]
pub struct JournalRow {
    /// Order within the apply, from 1.
    pub seq: i64,
    /// What it announced.
    pub entry: Entry,
    /// What undoes it, once known.
    pub undo: Option<Undo>,
    /// How far it got.
    pub state: RowState,
    /// Why it failed.
    pub error: Option<String>,
}

const APPLY_COLUMNS: &str = "id, kind, rollback_of, bundle, from_version, to_version, started_at, finished_at, outcome, backup_dir, error, manifest_json, signers, bundle_sha256, name";

fn apply_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApplyRecord> {
    Ok(ApplyRecord {
        id: r.get(0)?,
        kind: r.get(1)?,
        rollback_of: r.get(2)?,
        bundle: r.get(3)?,
        from_version: r.get(4)?,
        to_version: r.get(5)?,
        started_at: r.get(6)?,
        finished_at: r.get(7)?,
        outcome: r.get(8)?,
        backup_dir: r.get(9)?,
        error: r.get(10)?,
        manifest_json: r.get(11)?,
        signers: r.get(12)?,
        bundle_sha256: r.get(13)?,
        name: r.get(14)?,
    })
}

impl State {
    /// The installed release, if airlock installed one.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn installed(&self) -> Result<Option<Installed>, StateError> {
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
            let version = Version::parse(&version).map_err(|e| {
                self.invalid(format!("installed version `{version}` is not SemVer: {e}"))
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

    /// Starts an apply record, `running`; returns its id.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn begin_apply(&self, new: &NewApply<'_>) -> Result<i64, StateError> {
        self.conn
            .execute(
                "INSERT INTO applies (kind, rollback_of, bundle, bundle_sha256, name, from_version, to_version, started_at, manifest_json, signers)
                 VALUES (?1, ?2, ?3, '', ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    new.kind,
                    new.rollback_of,
                    new.bundle,
                    new.name,
                    new.from,
                    new.to,
                    now(),
                    new.manifest_json,
                    new.signers,
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Apply `id`, which must be recorded.
    ///
    /// # Errors
    /// [`StateError::Invalid`] when it is not.
    pub fn require_apply(&self, id: i64) -> Result<ApplyRecord, StateError> {
        self.get_apply(id)?
            .ok_or_else(|| self.invalid(format!("apply #{id} is not recorded")))
    }

    /// Records the backup folder an apply writes.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn set_backup_dir(&self, apply_id: i64, dir: &Path) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE applies SET backup_dir = ?1 WHERE id = ?2",
                params![dir.to_string_lossy(), apply_id],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Apply `id`, if recorded.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn get_apply(&self, id: i64) -> Result<Option<ApplyRecord>, StateError> {
        self.conn
            .query_row(
                &format!("SELECT {APPLY_COLUMNS} FROM applies WHERE id = ?1"),
                params![id],
                apply_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The apply that was interrupted (still `running`), if any. Only
    /// meaningful while holding the node's lock.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn interrupted(&self) -> Result<Option<ApplyRecord>, StateError> {
        self.conn
            .query_row(
                &format!("SELECT {APPLY_COLUMNS} FROM applies WHERE outcome = ?1 ORDER BY id DESC LIMIT 1"),
                params![ApplyOutcome::Running],
                apply_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The newest apply of a bundle that completed: what `rollback` undoes
    /// and `backups prune` keeps the backup of.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn last_completed_apply(&self) -> Result<Option<ApplyRecord>, StateError> {
        self.conn
            .query_row(
                &format!("SELECT {APPLY_COLUMNS} FROM applies WHERE kind = ?1 AND outcome = ?2 ORDER BY id DESC LIMIT 1"),
                params![ApplyKind::Apply, ApplyOutcome::Ok],
                apply_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The most recent applies, newest first.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn recent_applies(&self, limit: usize) -> Result<Vec<ApplyRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {APPLY_COLUMNS} FROM applies ORDER BY id DESC LIMIT ?1"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], apply_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Records the SHA-256 of the bundle file an apply staged.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn set_bundle_sha256(&self, apply_id: i64, sha256: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE applies SET bundle_sha256 = ?1 WHERE id = ?2",
                params![sha256, apply_id],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Ends an apply with `outcome`; with `installed` (name, version, bundle
    /// SHA-256) that release is recorded as installed in the same transaction;
    /// `at` (Unix seconds) is when it ended, also the installed time.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn finish_apply(
        &mut self,
        apply_id: i64,
        outcome: ApplyOutcome,
        error: Option<&str>,
        installed: Option<(&str, &Version, &str)>,
        at: i64,
    ) -> Result<(), StateError> {
        let path = self.path.clone();
        let err = |source: rusqlite::Error| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute(
            "UPDATE applies SET finished_at = ?1, outcome = ?2, error = ?3 WHERE id = ?4",
            params![at, outcome, error, apply_id],
        )
        .map_err(err)?;
        if let Some((name, version, sha)) = installed {
            tx.execute(
                "INSERT INTO installed (id, name, version, bundle_sha256, installed_at) VALUES (1, ?1, ?2, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET name = excluded.name, version = excluded.version,
                   bundle_sha256 = excluded.bundle_sha256, installed_at = excluded.installed_at",
                params![name, version.to_string(), sha, at],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Appends a journal row (durable before it returns) announcing `entry`,
    /// with the undo record that applies once it began, if known now.
    /// Returns the row's `seq`.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn journal_begin(
        &self,
        apply_id: i64,
        entry: &Entry,
        undo: Option<&Undo>,
    ) -> Result<i64, StateError> {
        let entry = self.to_json(entry)?;
        let undo = undo.map(|u| self.to_json(u)).transpose()?;
        self.conn
            .query_row(
                "INSERT INTO journal (apply_id, seq, entry, undo, state, at)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM journal WHERE apply_id = ?1), ?2, ?3, ?4, ?5)
                 RETURNING seq",
                params![apply_id, entry, undo, RowState::Begun, now()],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Marks journal row `seq` done or failed; `undo`, when given, is the
    /// record the entry left on completing (a backup's).
    ///
    /// # Errors
    /// [`StateError`].
    pub fn journal_end(
        &self,
        apply_id: i64,
        seq: i64,
        state: RowState,
        undo: Option<&Undo>,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        let undo = undo.map(|u| self.to_json(u)).transpose()?;
        self.conn
            .execute(
                "UPDATE journal SET state = ?3, undo = COALESCE(?4, undo), error = ?5, finished_at = ?6
                 WHERE apply_id = ?1 AND seq = ?2",
                params![apply_id, seq, state, undo, error, now()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The journal of an apply, in order.
    ///
    /// # Errors
    /// [`StateError`], also when a row cannot be read back.
    pub fn journal(&self, apply_id: i64) -> Result<Vec<JournalRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT seq, entry, undo, state, error FROM journal WHERE apply_id = ?1 ORDER BY seq",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![apply_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, RowState>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, entry, undo, state, error) = row.map_err(|e| self.err(e))?;
            let what = |field: &str, e: serde_json::Error| {
                self.invalid(format!(
                    "apply #{apply_id}, journal row {seq}: {field}: {e}"
                ))
            };
            out.push(JournalRow {
                seq,
                entry: serde_json::from_str(&entry).map_err(|e| what("entry", e))?,
                undo: undo
                    .map(|u| serde_json::from_str(&u))
                    .transpose()
                    .map_err(|e| what("undo", e))?,
                state,
                error,
            });
        }
        Ok(out)
    }

    fn to_json(&self, value: &impl serde::Serialize) -> Result<String, StateError> {
        serde_json::to_string(value)
            .map_err(|e| self.invalid(format!("encoding a journal row: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transaction::step::Step;

    fn new_apply() -> NewApply<'static> {
        NewApply {
            kind: ApplyKind::Apply,
            rollback_of: None,
            bundle: "b.airlock",
            name: "demo",
            from: "1.0.0",
            to: "1.1.0",
            manifest_json: "{}",
            signers: "",
        }
    }

    #[test]
    fn records_applies_and_their_typed_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(dir.path()).unwrap();
        assert!(state.installed().unwrap().is_none());
        let id = state.begin_apply(&new_apply()).unwrap();
        assert_eq!(state.interrupted().unwrap().unwrap().id, id);
        let seq = state
            .journal_begin(
                id,
                &Entry::Step {
                    step: Step::Stop {
                        command: "stop".into(),
                        wait_secs: 5,
                    },
                },
                Some(&Undo::StartOld {
                    version: Version::new(1, 0, 0),
                }),
            )
            .unwrap();
        assert_eq!(seq, 1);
        state
            .journal_end(id, seq, RowState::Done, None, None)
            .unwrap();
        let rows = state.journal(id).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, RowState::Done);
        assert_eq!(
            rows[0].undo,
            Some(Undo::StartOld {
                version: Version::new(1, 0, 0)
            })
        );
        state
            .finish_apply(
                id,
                ApplyOutcome::Ok,
                None,
                Some(("demo", &Version::new(1, 1, 0), "00")),
                now(),
            )
            .unwrap();
        assert_eq!(
            state.installed().unwrap().unwrap().version,
            Version::new(1, 1, 0)
        );
        assert!(state.interrupted().unwrap().is_none());
        assert_eq!(
            state.get_apply(id).unwrap().unwrap().outcome,
            ApplyOutcome::Ok
        );
        assert_eq!(state.last_completed_apply().unwrap().unwrap().id, id);
    }

    #[test]
    fn an_unknown_outcome_is_an_error_naming_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let id = state.begin_apply(&new_apply()).unwrap();
        state
            .exec(&format!(
                "UPDATE applies SET outcome = 'maybe' WHERE id = {id}"
            ))
            .unwrap();
        let err = state.get_apply(id).unwrap_err().to_string();
        assert!(err.contains("airlock-state.sqlite"), "{err}");
        assert!(err.contains("maybe"), "{err}");
    }
}
