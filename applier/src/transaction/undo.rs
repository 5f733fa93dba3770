//! What undoes a step, as values (docs/ARCHITECTURE.md, "Steps and their
//! undo"). A step that changes the node journals its undo record with its
//! announcement, before it acts, so a step cut off halfway is undone like a
//! finished one; a backup step, which changes nothing on the node, leaves
//! its record when it completes. A rollback replays the records of every
//! step that began, newest first.

use std::path::PathBuf;

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::steps::backup::{DatabaseRecord, FileRecord, TreeRecord};
use crate::steps::tree::TreeInstall;

/// One undo action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Undo {
    /// Remove the staging folder, and what was staged beside the targets
    /// (left by `stage`).
    RemoveStaging {
        /// The folder.
        dir: PathBuf,
        /// Files and trees staged beside their targets (`.NAME.airlock-ID`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        beside: Vec<PathBuf>,
    },
    /// Remove this apply's backup folder while it holds only pre-copies:
    /// when `backup.json` is not in it, it is no backup yet (left by the
    /// first `pre-copy` step; a complete backup is kept).
    RemovePreCopies {
        /// The backup folder.
        backup: PathBuf,
    },
    /// The service was stopped: start the old version and wait until it is
    /// healthy and reports `version` (left by `stop`).
    StartOld {
        /// The version that ran before.
        version: Version,
    },
    /// Put the Raft data back if it changed while the new version never ran;
    /// keep it, or refuse, if the new version ran (left by `backup raft`;
    /// docs/OPERATIONS.md, "The Raft safety rule").
    SettleRaft {
        /// The backup folder.
        backup: PathBuf,
        /// The backed-up tree.
        record: TreeRecord,
    },
    /// Put a replaced file back from its backup copy (left by `install`).
    RestoreFile {
        /// The backup folder.
        backup: PathBuf,
        /// The copy.
        record: FileRecord,
    },
    /// Remove a file the apply created (left by `install` of a new file).
    RemoveNewFile {
        /// The file.
        target: PathBuf,
    },
    /// Restore a database from its backup copy (left by the first migration
    /// of that database).
    RestoreDatabase {
        /// The backup folder.
        backup: PathBuf,
        /// The copy.
        record: DatabaseRecord,
    },
    /// Remove a database a migration created (it did not exist before).
    RemoveNewDatabase {
        /// Name in the site profile.
        name: String,
        /// The database file.
        path: PathBuf,
    },
    /// Put the tree an install replaced back, or remove the new one (left
    /// by `install tree`; see `steps::tree::undo_install`).
    RestoreTree {
        /// What the install did, and where the old tree waits.
        install: TreeInstall,
        /// The backup folder, where the commit keeps the old tree.
        backup: PathBuf,
    },
    /// Restore databases no migration had claimed, from their backup copies
    /// (left by the `pre_start` hook, which may change any of them).
    RestoreDatabases {
        /// The backup folder.
        backup: PathBuf,
        /// The copies.
        records: Vec<DatabaseRecord>,
    },
    /// The new version may be running: stop it before anything is restored
    /// (left by `start`). If it cannot be stopped, nothing is restored.
    StopNew,
}

impl Undo {
    /// The name events and messages use.
    pub fn label(&self) -> &'static str {
        match self {
            Self::RemoveStaging { .. } => "remove staging",
            Self::RemovePreCopies { .. } => "remove pre-copies",
            Self::StartOld { .. } => "start old version",
            Self::SettleRaft { .. } => "raft data",
            Self::RestoreFile { .. } => "restore",
            Self::RemoveNewFile { .. } => "remove new file",
            Self::RestoreDatabase { .. } => "restore database",
            Self::RemoveNewDatabase { .. } => "remove new database",
            Self::RestoreTree { .. } => "restore tree",
            Self::RestoreDatabases { .. } => "restore databases",
            Self::StopNew => "stop new version",
        }
    }

    /// The name of the fail point right after this action's journal row
    /// (docs/ARCHITECTURE.md, "Fail points"): `after-journal-undo-KIND`.
    pub fn failpoint(&self) -> String {
        format!("after-journal-undo-{}", self.label().replace(' ', "-"))
    }

    /// What the action does, for people.
    pub fn describe(&self) -> String {
        match self {
            Self::RemoveStaging { dir, beside } if beside.is_empty() => {
                format!("`{}`", dir.display())
            }
            Self::RemoveStaging { dir, beside } => format!(
                "`{}` and {} staged beside their targets",
                dir.display(),
                beside.len()
            ),
            Self::RemovePreCopies { backup } => format!("`{}`", backup.display()),
            Self::RestoreTree { install, .. } => {
                format!("{} (`{}`)", install.name, install.target.display())
            }
            Self::RestoreDatabases { records, .. } => records
                .iter()
                .map(|r| format!("{} ({})", r.name, r.source.display()))
                .collect::<Vec<_>>()
                .join(", "),
            Self::StartOld { version } => version.to_string(),
            Self::SettleRaft { record, .. } => {
                format!("compare `{}` with its backup", record.source.display())
            }
            Self::RestoreFile { record, .. } => record.source.display().to_string(),
            Self::RemoveNewFile { target } => target.display().to_string(),
            Self::RestoreDatabase { record, .. } => {
                format!("{} ({})", record.name, record.source.display())
            }
            Self::RemoveNewDatabase { name, path } => format!("{name} ({})", path.display()),
            Self::StopNew => "the new version may be running; nothing is restored under it".into(),
        }
    }

    /// Whether the action changes the node (removing the staging folder
    /// or the pre-copies does not).
    pub fn changes_node(&self) -> bool {
        !matches!(
            self,
            Self::RemoveStaging { .. } | Self::RemovePreCopies { .. }
        )
    }

    /// The databases this action restores.
    pub fn databases(&self) -> Vec<&str> {
        match self {
            Self::RestoreDatabase { record, .. } => vec![&record.name],
            Self::RemoveNewDatabase { name, .. } => vec![name],
            Self::RestoreDatabases { records, .. } => {
                records.iter().map(|r| r.name.as_str()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The undo of installing over `record` (taken by `backup installed`).
    pub fn of_install(backup: PathBuf, record: FileRecord) -> Self {
        if record.file.is_some() {
            Self::RestoreFile { backup, record }
        } else {
            Self::RemoveNewFile {
                target: record.source,
            }
        }
    }

    /// The undo of migrating the database of `record` (taken by `backup database`).
    pub fn of_migration(backup: PathBuf, record: DatabaseRecord) -> Self {
        if record.existed {
            Self::RestoreDatabase { backup, record }
        } else {
            Self::RemoveNewDatabase {
                name: record.name,
                path: record.source,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_install_over_nothing_is_undone_by_removing_the_file() {
        let record = FileRecord {
            source: "/opt/x".into(),
            file: None,
            sha256: None,
            size: 0,
            mode: 0,
        };
        assert_eq!(
            Undo::of_install("/b".into(), record),
            Undo::RemoveNewFile {
                target: "/opt/x".into()
            }
        );
        let json = serde_json::to_string(&Undo::StopNew).unwrap();
        assert_eq!(json, r#"{"kind":"stop_new"}"#);
        assert_eq!(
            Undo::StopNew.failpoint(),
            "after-journal-undo-stop-new-version"
        );
    }
}
