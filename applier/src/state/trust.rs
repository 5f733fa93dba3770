//! The trust versions this node accepted (docs/SITE.md, "Trust updates"):
//! each signed trust update file as it was installed, kept forever; the
//! highest version is the trust in force.

use rusqlite::{params, OptionalExtension as _};

use super::{now, State, StateError};

/// One accepted trust update.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TrustRecord {
    /// Its version.
    pub version: u64,
    /// The update file's bytes, as installed.
    pub document: String,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Key ids that counted, `current: …; new: …`.
    pub signers: String,
    /// When it was installed, Unix seconds.
    pub accepted_at: i64,
}

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<TrustRecord> {
    Ok(TrustRecord {
        version: r.get::<_, i64>(0)?.try_into().unwrap_or(0),
        document: r.get(1)?,
        sha256: r.get(2)?,
        signers: r.get(3)?,
        accepted_at: r.get(4)?,
    })
}

impl State {
    /// Every accepted trust update, oldest first.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn trust_records(&self) -> Result<Vec<TrustRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT version, document, sha256, signers, accepted_at FROM trust ORDER BY version",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], record).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The accepted trust update of the highest version, if any.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn trust_in_force(&self) -> Result<Option<TrustRecord>, StateError> {
        self.conn
            .query_row(
                "SELECT version, document, sha256, signers, accepted_at FROM trust
                 ORDER BY version DESC LIMIT 1",
                [],
                record,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Keeps an accepted trust update of `version`, checked against the
    /// trust of version `previous` (1: the site profile's): refused unless
    /// `previous` is still the version in force when it is written, so an
    /// update never skips one kept meanwhile by another process.
    ///
    /// # Errors
    /// [`StateError`], also when the version in force is not `previous` or
    /// `version` does not rise above it.
    pub fn add_trust(
        &self,
        version: u64,
        previous: u64,
        document: &str,
        sha256: &str,
        signers: &str,
    ) -> Result<(), StateError> {
        let version = i64::try_from(version)
            .map_err(|_| self.invalid(format!("trust version {version} is too large")))?;
        self.exec("BEGIN IMMEDIATE")?;
        let result = (|| {
            let highest: Option<i64> = self
                .conn
                .query_row("SELECT max(version) FROM trust", [], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            let in_force = highest.unwrap_or(1);
            if u64::try_from(in_force).ok() != Some(previous) || in_force >= version {
                return Err(self.invalid(format!(
                    "trust version {version} was checked against version {previous}, but version {in_force} is in force now; run the command again"
                )));
            }
            self.conn
                .execute(
                    "INSERT INTO trust (version, document, sha256, signers, accepted_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![version, document, sha256, signers, now()],
                )
                .map(|_| ())
                .map_err(|e| self.err(e))
        })();
        self.exec(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_only_rise_and_the_highest_is_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        assert_eq!(state.trust_in_force().unwrap(), None);
        state
            .add_trust(2, 1, "two", "s2", "current: A; new: B")
            .unwrap();
        assert!(state.add_trust(2, 2, "again", "s2b", "").is_err());
        assert!(state.add_trust(3, 1, "skips 2", "s3", "").is_err());
        state.add_trust(3, 2, "three", "s3", "").unwrap();
        assert_eq!(state.trust_in_force().unwrap().unwrap().document, "three");
        let all: Vec<u64> = state
            .trust_records()
            .unwrap()
            .iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(all, vec![2, 3]);
    }
}
