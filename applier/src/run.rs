//! The steps of an apply on one node and their undo, shared by `apply`,
//! `resume` and `rollback`. Every step is written to the journal (synced)
//! before it acts; [`Done::from_journal`] rebuilds what had happened after a
//! crash, so the undo works the same from memory or from disk.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_formats::durable::write_atomic;
use airlock_formats::{FileEntry, Manifest, Role};
use semver::Version;

use crate::backup::{self, BackupManifest, FileRecord};
use crate::error::ApplyError;
use crate::interrupt::Interrupt;
use crate::migrate;
use crate::report::Reporter;
use crate::service::{find_version, run_command, run_probe, wait_health};
use crate::site::Site;
use crate::stage;
use crate::state::{AuditEntry, JournalRow, State};

/// Journal step names. `resume` reads them back, so they never change.
pub mod steps {
    /// Staging the payload.
    pub const STAGE: &str = "stage";
    /// The pre-stop hook.
    pub const PRE_STOP: &str = "pre_stop";
    /// Stopping the service.
    pub const STOP: &str = "stop";
    /// Backing up one database.
    pub const BACKUP_DATABASE: &str = "backup database";
    /// Backing up the Raft folder.
    pub const BACKUP_RAFT: &str = "backup raft";
    /// Backing up one config file.
    pub const BACKUP_CONFIG: &str = "backup config";
    /// Backing up one file about to be replaced.
    pub const BACKUP_INSTALLED: &str = "backup installed";
    /// Writing `backup.json`.
    pub const BACKUP_COMPLETE: &str = "backup complete";
    /// Installing one binary or file.
    pub const INSTALL: &str = "install";
    /// Running one migration; the detail starts with the database name.
    pub const MIGRATE: &str = "migrate";
    /// Starting the new version.
    pub const START: &str = "start";
    /// The post-start hook.
    pub const POST_START: &str = "post_start";
    /// The new version is healthy and its hook ran: the point of no return.
    pub const HEALTHY: &str = "healthy";
    /// Recording the new version.
    pub const COMMIT: &str = "commit";
    /// Undoing the apply.
    pub const ROLLBACK: &str = "rollback";
    /// First row of a `rollback` command's record: the apply it undoes.
    pub const ROLLBACK_OF: &str = "rollback of";
}

/// What an apply is about: from the verified bundle, or from the state
/// database when `resume` picks it up.
#[derive(Debug, Clone)]
pub struct Context {
    /// The signed manifest.
    pub manifest: Manifest,
    /// The version that ran before.
    pub old: Version,
    /// The bundle file, as given.
    pub bundle: String,
    /// SHA-256 of the bundle file.
    pub sha256: String,
    /// Key ids that counted.
    pub signers: String,
}

/// What has happened so far, for the undo.
#[derive(Debug, Default)]
pub struct Done {
    /// The stop was announced (the service may be down).
    pub stopped: bool,
    /// The complete backup, once `backup.json` is written.
    pub backup: Option<(PathBuf, BackupManifest)>,
    /// Files whose replacement began, with their backup records.
    pub installed: Vec<FileRecord>,
    /// Databases a migration began on.
    pub migrated: BTreeSet<String>,
    /// An install began (even if the backup that lists the files cannot be read).
    pub install_began: bool,
    /// The start of the new version was announced.
    pub started: bool,
    /// The new version was healthy and its post-start hook ran.
    pub healthy: bool,
}

impl Done {
    /// Rebuilds what an interrupted apply had done from its journal and its
    /// backup folder. Restoring a file that was not replaced yet rewrites the
    /// same bytes, so every backed-up file counts once any install began.
    pub fn from_journal(rows: &[JournalRow], backup_dir: Option<&str>) -> Self {
        let has = |step: &str| rows.iter().any(|r| r.step == step);
        let backup = backup_dir
            .map(PathBuf::from)
            .and_then(|dir| backup::load(&dir).ok().map(|m| (dir, m)));
        let installed = match (&backup, has(steps::INSTALL)) {
            (Some((_, m)), true) => m.installed.clone(),
            _ => Vec::new(),
        };
        Self {
            stopped: has(steps::STOP),
            installed,
            migrated: migrated_databases(rows),
            started: has(steps::START),
            healthy: has(steps::HEALTHY),
            install_began: has(steps::INSTALL),
            backup,
        }
    }

    /// The last step the journal shows, for messages.
    pub fn last_step(rows: &[JournalRow]) -> String {
        rows.last().map_or_else(
            || "none".into(),
            |r| format!("{} {}", r.step, r.detail).trim().to_owned(),
        )
    }
}

/// The databases a journal shows a migration began on (a `migrate` row's
/// detail starts with the database name).
pub fn migrated_databases(rows: &[JournalRow]) -> BTreeSet<String> {
    rows.iter()
        .filter(|r| r.step == steps::MIGRATE)
        .filter_map(|r| r.detail.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Where a payload entry is installed on this site, if it is installed at all.
pub fn install_target(site: &Site, entry: &FileEntry) -> Option<PathBuf> {
    match entry.role {
        Role::Binary => entry
            .name
            .as_ref()
            .and_then(|n| site.profile.binaries.get(n).cloned())
            .or_else(|| entry.install_path.as_ref().map(PathBuf::from)),
        Role::File => site
            .profile
            .files
            .get(entry.path.as_str())
            .cloned()
            .or_else(|| entry.install_path.as_ref().map(PathBuf::from)),
        Role::Migration | Role::Script => None,
    }
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', "'\\''"))
}

/// A failed step: its name and what went wrong.
pub type StepFailure = (String, String);

/// One apply (or rollback) in progress.
pub struct Run<'a> {
    /// The site.
    pub site: &'a Site,
    /// The state database.
    pub state: State,
    /// Where events go.
    pub reporter: &'a Reporter,
    /// The record in `applies`.
    pub apply_id: i64,
    /// What is applied.
    pub ctx: Context,
    /// The staging folder.
    pub stage_dir: PathBuf,
    /// Extra environment of site commands and hooks.
    pub env: Vec<(&'static str, String)>,
    /// SIGINT/SIGTERM.
    pub interrupt: &'a Interrupt,
}

impl<'a> Run<'a> {
    /// A run; the environment is derived from `ctx` and `stage_dir`.
    pub fn new(
        site: &'a Site,
        state: State,
        reporter: &'a Reporter,
        apply_id: i64,
        ctx: Context,
        interrupt: &'a Interrupt,
    ) -> Self {
        let stage_dir = site.staging_dir().join(format!("apply-{apply_id}"));
        let env = vec![
            ("AIRLOCK_FROM_VERSION", ctx.old.to_string()),
            ("AIRLOCK_TO_VERSION", ctx.manifest.version.to_string()),
            ("AIRLOCK_BUNDLE", ctx.bundle.clone()),
            ("AIRLOCK_STAGE_DIR", stage_dir.display().to_string()),
        ];
        Self {
            site,
            state,
            reporter,
            apply_id,
            ctx,
            stage_dir,
            env,
            interrupt,
        }
    }

    fn manifest(&self) -> &Manifest {
        &self.ctx.manifest
    }

    /// Journals `step` (synced) and reports it; refuses to begin a new step
    /// once SIGINT or SIGTERM arrived.
    pub fn step(&self, step: &str, detail: &str) -> Result<(), String> {
        if self.interrupt.requested() {
            return Err("interrupted by a signal (SIGINT or SIGTERM)".into());
        }
        self.record(step, detail)
    }

    /// Journals `step` and reports it, whatever signals arrived.
    pub fn record(&self, step: &str, detail: &str) -> Result<(), String> {
        self.state
            .journal(self.apply_id, step, detail)
            .map_err(|e| e.to_string())?;
        self.reporter.event(step, "start", detail);
        Ok(())
    }

    fn ok(&self, step: &str, detail: &str) {
        self.reporter.event(step, "ok", detail);
    }

    fn run_site_command(&self, what: &str, command: &str) -> Result<(), String> {
        let timeout = Duration::from_secs(self.site.profile.service.command_timeout_secs);
        let out = run_command(command, &self.site.dir, &self.env, timeout)
            .map_err(|e| format!("cannot run the {what} command `{command}`: {e}"))?;
        if out.success() {
            Ok(())
        } else {
            Err(out.describe(&format!("the {what} command `{command}`")))
        }
    }

    /// Runs a hook script from the staging folder, if the bundle has one.
    pub fn run_hook(&self, hook: &str) -> Result<(), String> {
        let hooks = &self.manifest().hooks;
        let path = if hook == steps::PRE_STOP {
            &hooks.pre_stop
        } else {
            &hooks.post_start
        };
        let Some(path) = path else { return Ok(()) };
        let script = path.join_to(&self.stage_dir);
        self.step(hook, path.as_str())?;
        self.run_site_command(&format!("{hook} hook"), &shell_quote(&script))?;
        self.ok(hook, "");
        Ok(())
    }

    /// Runs the stop command and waits until the health check fails.
    pub fn stop(&self) -> Result<(), String> {
        let service = &self.site.profile.service;
        self.run_site_command("stop", &service.stop)?;
        let wait = Duration::from_secs(service.stop_wait_secs);
        let result = wait_health(service, &self.site.dir, &self.env, false, wait);
        if result.ok {
            return Err(format!(
                "service `{}` still passes its health check {}s after the stop command",
                service.name, service.stop_wait_secs
            ));
        }
        Ok(())
    }

    /// Waits until the service is healthy and reports `version`.
    pub fn wait_ready(&self, version: &Version) -> Result<(), String> {
        let service = &self.site.profile.service;
        let wait = Duration::from_secs(service.health_wait_secs);
        let deadline = Instant::now() + wait;
        let health = wait_health(service, &self.site.dir, &self.env, true, wait);
        if !health.ok {
            return Err(format!(
                "service `{}` did not become healthy within {}s: {}",
                service.name, service.health_wait_secs, health.output
            ));
        }
        if let Some(probe) = &service.version {
            loop {
                let result = run_probe(probe, &self.site.dir, &self.env);
                let found = result.ok.then(|| find_version(&result.output)).flatten();
                if found.as_ref() == Some(version) {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "service `{}` is healthy but reports version {}, expected {version}",
                        service.name,
                        found.map_or_else(
                            || format!("`{}`", result.output.trim()),
                            |v| v.to_string()
                        )
                    ));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        Ok(())
    }

    /// Runs the start command, then waits until the service is healthy and reports `version`.
    pub fn start(&self, version: &Version) -> Result<(), String> {
        self.run_site_command("start", &self.site.profile.service.start)?;
        self.wait_ready(version)
    }

    fn backup(&self, done: &mut Done) -> Result<(), String> {
        let m = self.manifest();
        let root = &self.site.profile.paths.backup_dir;
        let dir = root.join(format!(
            "{:010}-{}-{}-to-{}",
            crate::state::now(),
            self.apply_id,
            self.ctx.old,
            m.version
        ));
        backup::create_private_dir(&dir)?;
        self.state
            .set_backup_dir(self.apply_id, &dir)
            .map_err(|e| e.to_string())?;
        let mut record = BackupManifest {
            format: "airlock-backup/1".into(),
            created_at: crate::state::now(),
            from_version: self.ctx.old.to_string(),
            to_version: m.version.to_string(),
            bundle: Path::new(&self.ctx.bundle)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ..Default::default()
        };
        let data = &self.site.profile.data;
        for (name, path) in &data.databases {
            let what = format!("{name} ({})", path.display());
            self.step(steps::BACKUP_DATABASE, &what)?;
            let rec = backup::backup_database(&dir, name, path)?;
            self.ok(
                steps::BACKUP_DATABASE,
                &format!("{what}: {} bytes, integrity_check ok", rec.size),
            );
            record.databases.push(rec);
        }
        if let Some(raft) = &data.raft_dir {
            self.step(steps::BACKUP_RAFT, &raft.display().to_string())?;
            let rec = backup::backup_tree(&dir, "raft", raft)?;
            self.ok(
                steps::BACKUP_RAFT,
                &format!(
                    "{} files, {} bytes",
                    rec.files.len(),
                    rec.files.iter().map(|f| f.size).sum::<u64>()
                ),
            );
            record.raft = Some(rec);
        }
        for (i, path) in data.config_files.iter().enumerate() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            self.step(steps::BACKUP_CONFIG, &path.display().to_string())?;
            record.config_files.push(backup::backup_file(
                &dir,
                &format!("config/{i}-{name}"),
                path,
            )?);
            self.ok(steps::BACKUP_CONFIG, &path.display().to_string());
        }
        for (i, entry) in m.files.iter().enumerate() {
            if let Some(target) = install_target(self.site, entry) {
                self.step(steps::BACKUP_INSTALLED, &target.display().to_string())?;
                record.installed.push(backup::backup_file(
                    &dir,
                    &format!("installed/{i}-{}", entry.path.file_name()),
                    &target,
                )?);
                self.ok(steps::BACKUP_INSTALLED, &target.display().to_string());
            }
        }
        self.step(steps::BACKUP_COMPLETE, &dir.display().to_string())?;
        backup::complete(&dir, &record)?;
        self.ok("backup", &dir.display().to_string());
        done.backup = Some((dir, record));
        Ok(())
    }

    fn install(&self, done: &mut Done) -> Result<(), String> {
        let Some((_, record)) = &done.backup else {
            return Err("no complete backup".into());
        };
        let mut records = record.installed.clone().into_iter();
        for entry in &self.manifest().files {
            let Some(target) = install_target(self.site, entry) else {
                continue;
            };
            let rec = records
                .next()
                .ok_or("the backup does not list every install target")?;
            let what = format!("{} -> {}", entry.path, target.display());
            self.step(steps::INSTALL, &what)?;
            // Counted before the write: a half-done replacement is restored too.
            done.installed.push(rec);
            done.install_began = true;
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("creating `{}`: {e}", parent.display()))?;
            }
            let mut staged = stage::open_staged(&self.stage_dir, entry)
                .map_err(|e| format!("opening staged `{}`: {e}", entry.path))?;
            write_atomic(&target, entry.mode, |f| {
                std::io::copy(&mut staged, f).map(|_| ())
            })
            .map_err(|e| e.to_string())?;
            self.ok(steps::INSTALL, &what);
        }
        Ok(())
    }

    fn migrate(&self, done: &mut Done) -> Result<Vec<String>, String> {
        let m = self.manifest();
        let mut applied = Vec::new();
        for database in m.migrated_databases() {
            let Some(path) = self.site.profile.data.databases.get(database) else {
                return Err(format!("database `{database}` is not in site.toml"));
            };
            for (entry, info) in migrate::pending(path, database, m)? {
                let what = format!("{database} {} {}", info.version, info.description);
                self.step(steps::MIGRATE, &what)?;
                done.migrated.insert(database.to_owned());
                let sql = std::fs::read_to_string(entry.path.join_to(&self.stage_dir))
                    .map_err(|e| format!("reading staged `{}`: {e}", entry.path))?;
                migrate::apply_one(path, database, entry, info, &sql, &m.version.to_string())?;
                self.ok(steps::MIGRATE, &what);
                applied.push(format!("{database}:{}", info.version));
            }
        }
        Ok(applied)
    }

    /// Steps 4 to 8 of DESIGN.md: stop, back up, install, migrate, start,
    /// health, post-start hook. Returns the migrations applied.
    ///
    /// # Errors
    /// The step that failed and why; `done` says what to undo.
    pub fn forward(&self, done: &mut Done) -> Result<Vec<String>, StepFailure> {
        let fail = |step: &str| {
            let step = step.to_owned();
            move |e: String| (step, e)
        };
        self.step(steps::STOP, &self.site.profile.service.stop)
            .map_err(fail(steps::STOP))?;
        done.stopped = true;
        self.stop().map_err(fail(steps::STOP))?;
        self.ok(steps::STOP, "service is down");
        self.backup(done).map_err(fail("backup"))?;
        self.install(done).map_err(fail(steps::INSTALL))?;
        let migrations = self.migrate(done).map_err(fail(steps::MIGRATE))?;
        self.step(steps::START, &self.site.profile.service.start)
            .map_err(fail(steps::START))?;
        done.started = true;
        self.run_site_command("start", &self.site.profile.service.start)
            .map_err(fail(steps::START))?;
        self.ok(steps::START, "start command returned");
        self.wait_ready(&self.manifest().version)
            .map_err(fail(steps::START))?;
        self.ok(
            "health",
            &format!(
                "{} is healthy and reports {}",
                self.site.profile.service.name,
                self.manifest().version
            ),
        );
        self.run_hook(steps::POST_START)
            .map_err(fail(steps::POST_START))?;
        self.step(steps::HEALTHY, &self.manifest().version.to_string())
            .map_err(fail(steps::HEALTHY))?;
        done.healthy = true;
        Ok(migrations)
    }

    /// Records the new version as installed (step 9), audits and prunes old backups.
    ///
    /// # Errors
    /// [`ApplyError::NeedsOperator`]: the new version runs, but recording it failed.
    pub fn commit(&mut self, action: &str, backup_dir: Option<&Path>) -> Result<(), ApplyError> {
        let m = self.ctx.manifest.clone();
        let committed = self
            .record(steps::COMMIT, &m.version.to_string())
            .and_then(|()| {
                self.state
                    .finish_apply(
                        self.apply_id,
                        "ok",
                        None,
                        Some((&m.name, &m.version, &self.ctx.sha256)),
                    )
                    .map_err(|e| e.to_string())
            });
        if let Err(reason) = committed {
            // The new version runs and is healthy; only recording it failed.
            // Rolling a healthy node back for that would cost more than it saves.
            return Err(ApplyError::NeedsOperator {
                version: m.version.to_string(),
                step: steps::COMMIT.into(),
                reason,
                rollback: format!(
                    "not attempted: {} runs and is healthy, but the state database still names {}; repair the state database before the next apply",
                    m.version, self.ctx.old
                ),
            });
        }
        self.audit(action, "ok", None);
        if let Some(current) = backup_dir {
            match backup::prune(
                &self.site.profile.paths.backup_dir,
                self.site.profile.paths.keep_backups,
                &[current],
            ) {
                Ok(removed) if !removed.is_empty() => self.ok(
                    "prune backups",
                    &format!("removed {} old backup(s)", removed.len()),
                ),
                Ok(_) => {}
                Err(e) => self.reporter.event("prune backups", "failed", &e),
            }
        }
        self.ok(
            steps::COMMIT,
            &format!("{} {} installed", m.name, m.version),
        );
        Ok(())
    }

    /// Appends an audit entry about this run.
    pub fn audit(&self, action: &str, outcome: &str, error: Option<String>) {
        let _ = self.state.audit(&AuditEntry {
            action: action.into(),
            bundle: Some(self.ctx.bundle.clone()),
            version: Some(self.ctx.manifest.version.to_string()),
            bundle_sha256: Some(self.ctx.sha256.clone()),
            signers: Some(self.ctx.signers.clone()),
            outcome: outcome.into(),
            error,
        });
    }

    /// Decides what happens to the Raft data on rollback (DESIGN.md, safety
    /// invariants): unchanged since the backup, nothing to do; changed while
    /// the member never ran, restored; changed because the member ran the new
    /// version, never restored (it may hold acknowledged entries its cluster
    /// relies on), and the old version starts on it only when the bundle
    /// declares that both versions run side by side.
    pub fn settle_raft(
        &self,
        dir: &Path,
        raft: &backup::TreeRecord,
        started: bool,
    ) -> Result<(), String> {
        let diff = backup::diff_tree(raft)?;
        let folder = raft.source.display();
        if diff.is_empty() {
            self.ok(
                "raft data",
                &format!("`{folder}` is unchanged since the backup"),
            );
            return Ok(());
        }
        if !started {
            self.reporter.event(
                "restore raft",
                "start",
                &format!("{} file(s) of `{folder}` differ", diff.len()),
            );
            let n = backup::restore_tree(dir, raft)?;
            self.ok("restore raft", &format!("{n} file(s) restored"));
            return Ok(());
        }
        let m = self.manifest();
        if m.rolling_allowed {
            self.reporter.event(
                "raft data",
                "info",
                &format!(
                    "`{folder}` changed while {v} ran ({n} file(s)); kept as it is: restoring it could make the member forget acknowledged writes, and the bundle says {v} and the old version run side by side",
                    v = m.version,
                    n = diff.len(),
                ),
            );
            return Ok(());
        }
        Err(raft_refusal(&folder.to_string(), &m.version, diff.len()))
    }

    /// Undoes what `done` lists and starts the old version. Returns what could not be undone.
    pub fn undo(&self, done: &Done) -> Vec<String> {
        let mut problems = Vec::new();
        let old = &self.ctx.old;
        let _ = self.record(steps::ROLLBACK, &format!("back to {old}"));
        if done.started || done.stopped {
            // The new version may be half up: nothing may run while files go back.
            if let Err(e) = self.stop() {
                if done.started {
                    // Restoring files and databases under a running service
                    // could corrupt them: leave everything for the operator.
                    return vec![format!(
                        "stopping the new version failed, so nothing was restored (the backup is intact): {e}"
                    )];
                }
            }
        }
        if let Some((dir, record)) = &done.backup {
            for rec in done.installed.iter().rev() {
                self.reporter
                    .event("restore", "start", &rec.source.display().to_string());
                if let Err(e) = backup::restore_file(dir, rec) {
                    problems.push(e);
                }
            }
            for db in record
                .databases
                .iter()
                .filter(|d| done.migrated.contains(&d.name))
            {
                self.reporter.event(
                    "restore database",
                    "start",
                    &format!("{} ({})", db.name, db.source.display()),
                );
                if let Err(e) = backup::restore_database(dir, db) {
                    problems.push(e);
                }
            }
            if let Some(raft) = &record.raft {
                if let Err(e) = self.settle_raft(dir, raft, done.started) {
                    problems.push(e);
                }
            }
        } else if done.install_began || !done.installed.is_empty() || !done.migrated.is_empty() {
            problems.push("changes were made without a complete backup".into());
        }
        if done.stopped && problems.is_empty() {
            self.reporter
                .event("start old version", "start", &old.to_string());
            if let Err(e) = self.start(old) {
                problems.push(format!("starting {old} again: {e}"));
            }
        }
        problems
    }

    /// Undoes after `step` failed with `reason`, records the outcome and
    /// returns the error to report.
    pub fn fail_and_undo(
        &mut self,
        action: &str,
        step: String,
        reason: String,
        done: &Done,
    ) -> ApplyError {
        self.reporter.event(&step, "failed", &reason);
        let problems = self.undo(done);
        let old = self.ctx.old.to_string();
        let version = self.ctx.manifest.version.to_string();
        let (error, outcome) = if problems.is_empty() {
            (
                ApplyError::RolledBack {
                    version,
                    old_version: old.clone(),
                    step,
                    reason,
                },
                "rolled-back",
            )
        } else {
            (
                ApplyError::NeedsOperator {
                    version,
                    step,
                    reason,
                    rollback: problems.join("; "),
                },
                "needs-operator",
            )
        };
        let _ = self
            .state
            .finish_apply_simple(self.apply_id, outcome, &error.to_string());
        self.audit(action, outcome, Some(error.to_string()));
        let (status, summary) = if problems.is_empty() {
            ("ok", format!("the node runs {old} again, healthy"))
        } else {
            ("failed", format!("incomplete: {}", problems.join("; ")))
        };
        self.reporter.event(steps::ROLLBACK, status, &summary);
        error
    }
}

/// Why Raft data that changed while `version` ran cannot simply go back, and
/// the safe procedure instead.
pub fn raft_refusal(folder: &str, version: &Version, changed: usize) -> String {
    format!(
        "the Raft data in `{folder}` changed while {version} ran ({changed} file(s)) and this bundle does not allow mixed versions, so the old version may not read it; \
         airlock does not restore it, because a member that forgets acknowledged entries can break its cluster. \
         Safe procedure: remove this member from its cluster, clear its data directory and add it back so it copies the current data from the leader \
         (etcd: `etcdctl member remove`, then `member add`); for a single-member cluster, start {version} again or restore the cluster from a snapshot"
    )
}

/// Turns a failure of a step that changed nothing into an error and records it.
pub fn preflight_failure(
    run: &mut Run<'_>,
    action: &str,
    step: &str,
    reason: String,
) -> ApplyError {
    let e = ApplyError::Preflight {
        step: step.into(),
        reason,
    };
    let _ = run
        .state
        .finish_apply_simple(run.apply_id, "failed", &e.to_string());
    run.audit(action, "failed", Some(e.to_string()));
    e
}
