//! The applier's own state, an SQLite database in the state folder
//! (`STATE_DIR/airlock-state.sqlite`, docs/SITE.md "The state database"):
//! the installed version, each apply with its journal of steps and undo
//! records ([`applies`]), an append-only audit log ([`audit`]), and on a
//! coordinator the rolling upgrades ([`rollouts`]). [`schema`] creates the
//! tables and upgrades older databases in place.
//!
//! The database runs with `synchronous = EXTRA` in its rollback-journal
//! mode (SQLite docs, "PRAGMA synchronous": EXTRA also syncs the folder
//! after the journal is deleted, so a commit survives a power cut that
//! follows it closely), so a journal row is on disk before the step it
//! announces acts.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use thiserror::Error;

pub mod applies;
pub mod audit;
pub mod clock;
pub mod rollouts;
pub mod schema;
pub mod trust;

pub use applies::{
    ApplyKind, ApplyOutcome, ApplyRecord, Installed, JournalRow, NewApply, RowState,
};
pub use audit::{AuditAction, AuditEntry, AuditRow, AUDIT_HEAD};
pub use clock::HighestTime;
pub use rollouts::{NodeState, NodeUpdate, RolloutNode, RolloutOutcome, RolloutRecord};
pub use trust::TrustRecord;

/// File name of the state database inside the state folder.
pub const STATE_DB: &str = "airlock-state.sqlite";

/// Why the state database failed; each variant names the file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StateError {
    /// SQLite failed.
    #[error("state database `{}`: {source}", .path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored value cannot be read back (a journal entry, a version).
    #[error("state database `{}`: {what}", .path.display())]
    Invalid {
        /// The database file.
        path: PathBuf,
        /// What is wrong, naming the row.
        what: String,
    },
    /// The state folder or `audit.head` cannot be written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// `audit.head` cannot be replaced.
    #[error(transparent)]
    Durable(#[from] airlock_formats::durable::DurableError),
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Who runs the applier, for the audit log: the real uid and its user name
/// from the user database (`alice (uid 1000)`), and, when that is root run
/// through sudo, the user who ran sudo (`root (uid 0) via sudo by alice`).
/// `$USER` is not used: anyone can set it.
pub fn os_user() -> String {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| "?".to_string(), |u| u.name);
    let mut who = format!("{name} (uid {uid})");
    if uid.is_root() {
        if let Ok(by) = std::env::var("SUDO_USER") {
            who.push_str(&format!(" via sudo by {}", airlock_formats::shown(&by)));
        }
    }
    who
}

/// Declares an enum that is stored as TEXT in the state database and shown as
/// the same word in JSON (`ToSql`/`FromSql` and serde agree).
macro_rules! text_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)*
        }

        impl $name {
            /// The word stored and shown.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }

            /// The value for a stored word.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some(Self::$variant),)*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                let text = value.as_str()?;
                Self::parse(text).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(
                        format!("`{text}` is not a known {}", stringify!($name)).into(),
                    )
                })
            }
        }
    };
}
pub(crate) use text_enum;

/// The open state database.
pub struct State {
    conn: Connection,
    path: PathBuf,
    dir: PathBuf,
}

impl State {
    /// Opens (creating) the state database in `state_dir`, upgrading an older schema.
    ///
    /// # Errors
    /// [`StateError`] naming the file.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        fs_err::create_dir_all(state_dir)?;
        let path = state_dir.join(STATE_DB);
        let conn = Connection::open(&path).map_err(|source| StateError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let state = Self {
            conn,
            path,
            dir: state_dir.to_owned(),
        };
        state.exec("PRAGMA synchronous = EXTRA; PRAGMA busy_timeout = 10000;")?;
        schema::bring_up_to_date(&state)?;
        Ok(state)
    }

    /// Opens the state database only if it exists (read-only use: `verify`, `status`).
    ///
    /// # Errors
    /// [`StateError`] naming the file.
    pub fn open_existing(state_dir: &Path) -> Result<Option<Self>, StateError> {
        if fs_err::exists(state_dir.join(STATE_DB))? {
            Self::open(state_dir).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn invalid(&self, what: String) -> StateError {
        StateError::Invalid {
            path: self.path.clone(),
            what,
        }
    }

    fn exec(&self, sql: &str) -> Result<(), StateError> {
        self.conn.execute_batch(sql).map_err(|e| self.err(e))
    }
}
