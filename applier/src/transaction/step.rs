//! The steps of an apply as values (docs/ARCHITECTURE.md, "Steps and their
//! undo"). [`planned_steps`] makes the list once, from the verified manifest
//! and the site; `plan` prints that list and `apply` executes it, so the two
//! cannot drift apart. Each step is journaled before it acts.

use std::path::PathBuf;

use airlock_formats::{Manifest, MigrationTool, OnInterrupt, Tree};
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::error::StepError;
use crate::site::Site;
use crate::steps::install::install_target;
pub use crate::steps::install::Staging;
use crate::steps::migrate;

/// One step of an apply, in the order [`planned_steps`] lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// Read the whole bundle again into the staging folder, checking every
    /// chunk and file against the signed manifest.
    Stage {
        /// Payload files.
        files: usize,
        /// Their total size, in bytes.
        bytes: u64,
    },
    /// Copy a database file into the backup folder while the service runs;
    /// its backup step after the stop copies only what changed since
    /// (docs/SITE.md, "Backups while the service runs").
    PreCopyDatabase {
        /// Name in the site profile.
        name: String,
        /// The database file.
        path: PathBuf,
    },
    /// Copy the Raft data directory into the backup folder while the
    /// service runs.
    PreCopyRaft {
        /// The folder.
        dir: PathBuf,
    },
    /// Copy the config files and the files the apply replaces into the
    /// backup folder while the service runs.
    PreCopyFiles {
        /// Config files, in the order of their backup steps.
        config: Vec<PathBuf>,
        /// Installed files the apply replaces, in the order of their backup steps.
        installed: Vec<PathBuf>,
    },
    /// Run the bundle's `pre_stop` hook (drain). A failure changes nothing.
    PreStopHook {
        /// The script's payload path.
        script: String,
    },
    /// Run the site's stop command and wait until the health check fails.
    Stop {
        /// The stop command.
        command: String,
        /// `stop_wait_secs`.
        wait_secs: u64,
    },
    /// Fold the database's WAL into its file, then, under SQLite's
    /// EXCLUSIVE lock, bring its pre-copy up to date; `PRAGMA
    /// integrity_check` of the copy runs beside the next steps and must
    /// pass before the backup is complete.
    BackupDatabase {
        /// Name in the site profile.
        name: String,
        /// The database file.
        path: PathBuf,
    },
    /// Bring the pre-copy of the Raft data directory up to date, with a
    /// SHA-256 per file.
    BackupRaft {
        /// The folder.
        dir: PathBuf,
    },
    /// Copy a config file.
    BackupConfig {
        /// The file.
        path: PathBuf,
    },
    /// Copy a file the apply will replace.
    BackupInstalled {
        /// The installed file.
        target: PathBuf,
    },
    /// Write `backup.json`: from here on the backup is complete.
    BackupComplete,
    /// Install a binary or file: rename the staged copy over the target.
    Install {
        /// Payload path.
        file: String,
        /// Where it goes.
        target: PathBuf,
        /// Permission bits.
        mode: u32,
        /// Where the stage step put it.
        #[serde(default)]
        staging: Staging,
    },
    /// Install a tree: swap the staged folder with the live one.
    InstallTree {
        /// The tree's name.
        tree: String,
        /// The folder it replaces.
        target: PathBuf,
        /// Where the stage step put it.
        staging: Staging,
        /// Its files.
        files: usize,
        /// Their total size, in bytes.
        bytes: u64,
    },
    /// Run one `up` migration as its tool runs it, and record it where the
    /// tool records it (docs/SITE.md, "Migrations").
    Migrate {
        /// Database name in the site profile.
        database: String,
        /// Migration version, as the tool records it.
        version: String,
        /// Migration description.
        description: String,
        /// Payload path of its SQL.
        file: String,
        /// The tool whose rules it follows (absent in journals of airlock 0.1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tool: Option<MigrationTool>,
        /// In a transaction, without one, or recording only.
        #[serde(default)]
        action: migrate::Action,
    },
    /// Run the bundle's `pre_start` hook: a data-format migration, after
    /// everything is installed and migrated and before the start.
    PreStartHook {
        /// The script's payload path.
        script: String,
        /// What `resume` does when an apply was interrupted inside it.
        #[serde(default)]
        on_interrupt: OnInterrupt,
    },
    /// Run the site's start command.
    Start {
        /// The start command.
        command: String,
    },
    /// Wait until the service is healthy and reports the new version.
    Health {
        /// The version it must report.
        version: Version,
        /// `health_wait_secs`.
        wait_secs: u64,
    },
    /// Run the bundle's `post_start` hook.
    PostStartHook {
        /// The script's payload path.
        script: String,
    },
    /// The new version is healthy and its hook ran: the point of no return.
    /// From here an interrupted apply is completed, not undone.
    Healthy {
        /// The new version.
        version: Version,
    },
    /// Record the new version as installed, audit, prune old backups.
    Commit {
        /// The new version.
        version: Version,
    },
}

impl Step {
    /// The name events and messages use (`--json` field `step`).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Stage { .. } => "stage",
            Self::PreCopyDatabase { .. } => "pre-copy database",
            Self::PreCopyRaft { .. } => "pre-copy raft",
            Self::PreCopyFiles { .. } => "pre-copy files",
            Self::PreStopHook { .. } => "pre_stop",
            Self::Stop { .. } => "stop",
            Self::BackupDatabase { .. } => "backup database",
            Self::BackupRaft { .. } => "backup raft",
            Self::BackupConfig { .. } => "backup config",
            Self::BackupInstalled { .. } => "backup installed",
            Self::BackupComplete => "backup",
            Self::Install { .. } => "install",
            Self::InstallTree { .. } => "install tree",
            Self::PreStartHook { .. } => "pre_start",
            Self::Migrate { .. } => "migrate",
            Self::Start { .. } => "start",
            Self::Health { .. } => "health",
            Self::PostStartHook { .. } => "post_start",
            Self::Healthy { .. } => "healthy",
            Self::Commit { .. } => "commit",
        }
    }

    /// The name of the fail point right after this step's journal row
    /// (docs/ARCHITECTURE.md, "Fail points"): `after-journal-KIND`.
    pub fn failpoint(&self) -> String {
        format!("after-journal-{}", self.label().replace(' ', "-"))
    }

    /// What the step does, for people.
    pub fn describe(&self) -> String {
        match self {
            Self::Stage { files, bytes } => format!(
                "stream {files} files ({}) into the staging folder, checking every SHA-256",
                airlock_formats::shown::bytes(*bytes)
            ),
            Self::PreStopHook { script } | Self::PostStartHook { script } => {
                format!("run hook `{script}`")
            }
            Self::PreStartHook {
                script,
                on_interrupt,
            } => format!(
                "run hook `{script}`; if interrupted, {}",
                match on_interrupt {
                    OnInterrupt::Rerun => "resume runs it again",
                    OnInterrupt::Rollback => "resume rolls back",
                }
            ),
            Self::Stop { command, wait_secs } => format!(
                "`{command}`, then wait up to {wait_secs}s for the health check to fail"
            ),
            Self::PreCopyDatabase { name, path } => format!(
                "copy {name} (`{}`) into the backup folder while the service runs",
                path.display()
            ),
            Self::PreCopyRaft { dir } => format!(
                "copy `{}` into the backup folder while the service runs",
                dir.display()
            ),
            Self::PreCopyFiles { config, installed } => format!(
                "copy {} config files and {} files about to be replaced into the backup folder while the service runs",
                config.len(),
                installed.len()
            ),
            Self::BackupDatabase { name, path } => format!(
                "{name} (`{}`): checkpoint its WAL, copy what changed since the pre-copy under an EXCLUSIVE lock, PRAGMA integrity_check beside the next steps",
                path.display()
            ),
            Self::BackupRaft { dir } => format!(
                "`{}`: copy what changed since the pre-copy, a SHA-256 per file",
                dir.display()
            ),
            Self::BackupConfig { path } => format!("`{}`", path.display()),
            Self::BackupInstalled { target } => format!("`{}`", target.display()),
            Self::BackupComplete => "write backup.json: the backup is complete".into(),
            Self::Install {
                file,
                target,
                mode,
                staging,
            } => format!(
                "{file} -> `{}` mode {mode:o}, {}",
                target.display(),
                staging.describe()
            ),
            Self::InstallTree {
                tree,
                target,
                staging,
                files,
                bytes,
            } => format!(
                "{tree} -> `{}`: {files} files, {}, {}",
                target.display(),
                airlock_formats::shown::bytes(*bytes),
                staging.describe()
            ),
            Self::Migrate {
                database,
                version,
                description,
                tool,
                action,
                ..
            } => match tool {
                Some(tool) => format!(
                    "{database} {version} `{description}` ({tool}, {})",
                    action.describe()
                ),
                None => format!("{database} {version} `{description}`"),
            },
            Self::Start { command } => format!("`{command}`"),
            Self::Health { version, wait_secs } => format!(
                "wait up to {wait_secs}s for the health check to pass and the version to be {version}"
            ),
            Self::Healthy { version } => {
                format!("{version} is healthy: from here an interruption completes the apply")
            }
            Self::Commit { version } => {
                format!("record {version} as installed, audit, prune old backups")
            }
        }
    }

    /// Whether the step changes the node. Before the first such step (the
    /// stop) a failure needs no rollback.
    pub fn changes_node(&self) -> bool {
        !matches!(
            self,
            Self::Stage { .. }
                | Self::PreCopyDatabase { .. }
                | Self::PreCopyRaft { .. }
                | Self::PreCopyFiles { .. }
                | Self::PreStopHook { .. }
                | Self::BackupDatabase { .. }
                | Self::BackupRaft { .. }
                | Self::BackupConfig { .. }
                | Self::BackupInstalled { .. }
                | Self::BackupComplete
        )
    }

    /// Whether a SIGINT or SIGTERM that arrived earlier stops the apply
    /// before this step: every step but the commit, which records a new
    /// version that is already healthy.
    pub fn stops_on_signal(&self) -> bool {
        !matches!(self, Self::Commit { .. })
    }
}

/// Where tree `tree` is installed on this site: the site profile's
/// `[trees]` entry, else the bundle's `install_path`.
pub fn tree_target(site: &Site, tree: &Tree) -> PathBuf {
    site.profile
        .trees
        .get(&tree.name)
        .cloned()
        .unwrap_or_else(|| PathBuf::from(&tree.install_path))
}

/// The steps of `manifest` from its `pre_start` hook (or the start) to the
/// commit: what `resume` runs again when a `pre_start` hook declared
/// `rerun` was interrupted.
pub fn steps_from_pre_start(site: &Site, manifest: &Manifest) -> Vec<Step> {
    let service = &site.profile.service;
    let mut steps = Vec::new();
    if let Some(script) = &manifest.hooks.pre_start {
        steps.push(Step::PreStartHook {
            script: script.to_string(),
            on_interrupt: manifest.hooks.pre_start_on_interrupt.unwrap_or_default(),
        });
    }
    steps.push(Step::Start {
        command: service.start.clone(),
    });
    steps.push(Step::Health {
        version: manifest.version.clone(),
        wait_secs: service.health_wait_secs,
    });
    if let Some(script) = &manifest.hooks.post_start {
        steps.push(Step::PostStartHook {
            script: script.to_string(),
        });
    }
    steps.push(Step::Healthy {
        version: manifest.version.clone(),
    });
    steps.push(Step::Commit {
        version: manifest.version.clone(),
    });
    steps
}

/// The steps applying `manifest` here will take, in order: the one list
/// `plan` prints and `apply` executes. Pending migrations are read from the
/// databases now.
///
/// # Errors
/// [`StepError::UnknownDatabase`], or a database that cannot be read, or a
/// recorded migration that changed.
pub fn planned_steps(site: &Site, manifest: &Manifest) -> Result<Vec<Step>, StepError> {
    let service = &site.profile.service;
    let data = &site.profile.data;
    let mut steps = vec![Step::Stage {
        files: manifest.files.len(),
        bytes: manifest.payload.unpacked_size,
    }];
    let installs: Vec<(String, PathBuf, u32)> = manifest
        .files
        .iter()
        .filter_map(|e| install_target(site, e).map(|t| (e.path.to_string(), t, e.mode)))
        .collect();
    for (name, path) in &data.databases {
        steps.push(Step::PreCopyDatabase {
            name: name.clone(),
            path: path.clone(),
        });
    }
    if let Some(dir) = &data.raft_dir {
        steps.push(Step::PreCopyRaft { dir: dir.clone() });
    }
    if !data.config_files.is_empty() || !installs.is_empty() {
        steps.push(Step::PreCopyFiles {
            config: data.config_files.clone(),
            installed: installs.iter().map(|(_, t, _)| t.clone()).collect(),
        });
    }
    if let Some(script) = &manifest.hooks.pre_stop {
        steps.push(Step::PreStopHook {
            script: script.to_string(),
        });
    }
    steps.push(Step::Stop {
        command: service.stop.clone(),
        wait_secs: service.stop_wait_secs,
    });
    for (name, path) in &data.databases {
        steps.push(Step::BackupDatabase {
            name: name.clone(),
            path: path.clone(),
        });
    }
    if let Some(dir) = &data.raft_dir {
        steps.push(Step::BackupRaft { dir: dir.clone() });
    }
    for path in &data.config_files {
        steps.push(Step::BackupConfig { path: path.clone() });
    }
    for (_, target, _) in &installs {
        steps.push(Step::BackupInstalled {
            target: target.clone(),
        });
    }
    steps.push(Step::BackupComplete);
    for (file, target, mode) in installs {
        let staging = Staging::for_target(&target);
        steps.push(Step::Install {
            file,
            target,
            mode,
            staging,
        });
    }
    for tree in &manifest.trees {
        let target = tree_target(site, tree);
        let (files, bytes) = manifest
            .tree_files(&tree.name)
            .fold((0, 0), |(n, b), (f, _)| (n + 1, b + f.size));
        steps.push(Step::InstallTree {
            tree: tree.name.clone(),
            staging: Staging::for_target(&target),
            target,
            files,
            bytes,
        });
    }
    for database in manifest.migrated_databases() {
        let path = data
            .databases
            .get(database)
            .ok_or_else(|| StepError::UnknownDatabase {
                database: database.into(),
            })?;
        for p in migrate::pending(path, database, manifest)? {
            steps.push(Step::Migrate {
                database: database.into(),
                version: p.migration.version.to_string(),
                description: p.migration.description.clone(),
                file: p.migration.entry.path.to_string(),
                tool: Some(p.migration.tool),
                action: p.action,
            });
        }
    }
    steps.extend(steps_from_pre_start(site, manifest));
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_through_the_journal_format() {
        let steps = [
            Step::Stage {
                files: 3,
                bytes: 10,
            },
            Step::Install {
                file: "bin/demo".into(),
                target: "/opt/demo/bin/demo".into(),
                mode: 0o755,
                staging: Staging::Beside,
            },
            Step::InstallTree {
                tree: "static".into(),
                target: "/opt/demo/static".into(),
                staging: Staging::Central,
                files: 3,
                bytes: 10,
            },
            Step::PreStartHook {
                script: "hooks/pre_start/migrate.sh".into(),
                on_interrupt: OnInterrupt::Rerun,
            },
            Step::BackupComplete,
            Step::Migrate {
                database: "main".into(),
                version: "20240313".into(),
                description: "170000_sso".into(),
                file: "migrations/main/2024-03-13_170000_sso/up.sql".into(),
                tool: Some(MigrationTool::Diesel),
                action: migrate::Action::WithoutTransaction,
            },
            Step::Healthy {
                version: Version::new(1, 1, 0),
            },
        ];
        for step in steps {
            let json = serde_json::to_string(&step).unwrap();
            assert_eq!(serde_json::from_str::<Step>(&json).unwrap(), step, "{json}");
        }
        assert_eq!(
            serde_json::to_value(Step::BackupComplete).unwrap(),
            serde_json::json!({"kind": "backup_complete"})
        );
        // A journal row of airlock 0.1 still reads.
        let old = r#"{"kind":"migrate","database":"main","version":"0001","description":"x","file":"migrations/main/0001_x.sql"}"#;
        match serde_json::from_str::<Step>(old).unwrap() {
            Step::Migrate { tool, action, .. } => {
                assert_eq!(tool, None);
                assert_eq!(action, migrate::Action::InTransaction);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Step::BackupRaft { dir: "/d".into() }.failpoint(),
            "after-journal-backup-raft"
        );
    }
}
