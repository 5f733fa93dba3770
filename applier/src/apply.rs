//! `airlock-apply apply` on one node: the steps of DESIGN.md "Applying one
//! node", each announced in the journal before it acts, and an automatic
//! rollback when any step after the stop fails.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_formats::durable::write_atomic;
use airlock_formats::{FileEntry, Manifest, Role};
use semver::Version;

use crate::backup::{self, BackupManifest, FileRecord};
use crate::error::ApplyError;
use crate::migrate;
use crate::report::Reporter;
use crate::service::{find_version, run_command, run_probe, wait_health};
use crate::site::Site;
use crate::stage::{self, StageSink};
use crate::state::{AuditEntry, State};
use crate::verify::{read_and_verify, Verified, VerifyOptions};

/// Name of the lock file in the state folder.
pub const LOCK_FILE: &str = "apply.lock";

/// Free space kept in reserve beyond what staging and backups need: 5 % plus 16 MiB.
fn with_margin(bytes: u64) -> u64 {
    bytes + bytes / 20 + 16 * 1024 * 1024
}

/// What a successful apply did.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    /// Version before.
    pub from: Version,
    /// Version now.
    pub to: Version,
    /// The backup folder.
    pub backup_dir: PathBuf,
    /// Migrations applied, as `database:version`.
    pub migrations: Vec<String>,
    /// Time from the stop to healthy on the new version.
    pub downtime: Duration,
}

/// Holds the node's apply lock until dropped (flock(2) via `File::try_lock`;
/// the kernel releases it when the process dies, so a killed apply leaves no stale lock).
pub struct NodeLock {
    _file: File,
}

/// Takes the node's apply lock.
///
/// # Errors
/// [`ApplyError::Busy`] when another process holds it.
pub fn lock(site: &Site) -> Result<NodeLock, ApplyError> {
    let dir = &site.profile.paths.state_dir;
    std::fs::create_dir_all(dir).map_err(ApplyError::io(format!(
        "creating state folder `{}`",
        dir.display()
    )))?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(ApplyError::io(format!("opening lock `{}`", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(NodeLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(ApplyError::Busy(path)),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(ApplyError::io(format!("locking `{}`", path.display()))(e))
        }
    }
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

/// What has happened so far, for the rollback.
#[derive(Default)]
struct Done {
    stopped: bool,
    backup: Option<(PathBuf, BackupManifest)>,
    installed: Vec<FileRecord>,
    migrated: BTreeSet<String>,
    started: bool,
}

struct Run<'a> {
    site: &'a Site,
    state: State,
    reporter: &'a Reporter,
    apply_id: i64,
    verified: Verified,
    stage_dir: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Run<'_> {
    fn manifest(&self) -> &Manifest {
        &self.verified.header.manifest
    }

    fn step(&self, step: &str, detail: &str) -> Result<(), String> {
        self.state
            .journal(self.apply_id, step, detail)
            .map_err(|e| e.to_string())?;
        self.reporter.event(step, "start", detail);
        Ok(())
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

    fn run_hook(&self, hook: &str) -> Result<(), String> {
        let hooks = &self.manifest().hooks;
        let path = match hook {
            "pre_stop" => &hooks.pre_stop,
            _ => &hooks.post_start,
        };
        let Some(path) = path else { return Ok(()) };
        let script = path.join_to(&self.stage_dir);
        self.step(hook, path.as_str())?;
        self.run_site_command(&format!("{hook} hook"), &shell_quote(&script))
    }

    fn stop(&self) -> Result<(), String> {
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

    /// Starts the service and waits until it is healthy and reports `version`.
    fn start(&self, version: &Version) -> Result<(), String> {
        let service = &self.site.profile.service;
        self.run_site_command("start", &service.start)?;
        let wait = Duration::from_secs(service.health_wait_secs);
        let deadline = std::time::Instant::now() + wait;
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
                if std::time::Instant::now() >= deadline {
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

    fn backup(&self, done: &mut Done) -> Result<(), String> {
        let m = self.manifest();
        let root = &self.site.profile.paths.backup_dir;
        let dir = root.join(format!(
            "{:010}-{}-{}-to-{}",
            crate::state::now(),
            self.apply_id,
            self.verified.installed.version,
            m.version
        ));
        backup::create_private_dir(&dir)?;
        self.state
            .set_backup_dir(self.apply_id, &dir)
            .map_err(|e| e.to_string())?;
        let mut record = BackupManifest {
            format: "airlock-backup/1".into(),
            created_at: crate::state::now(),
            from_version: self.verified.installed.version.to_string(),
            to_version: m.version.to_string(),
            bundle: self
                .verified
                .bundle
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ..Default::default()
        };
        let data = &self.site.profile.data;
        for (name, path) in &data.databases {
            self.step("backup database", &format!("{name} ({})", path.display()))?;
            record
                .databases
                .push(backup::backup_database(&dir, name, path)?);
        }
        if let Some(raft) = &data.raft_dir {
            self.step("backup raft", &raft.display().to_string())?;
            record.raft = Some(backup::backup_tree(&dir, "raft", raft)?);
        }
        for (i, path) in data.config_files.iter().enumerate() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            self.step("backup config", &path.display().to_string())?;
            record.config_files.push(backup::backup_file(
                &dir,
                &format!("config/{i}-{name}"),
                path,
            )?);
        }
        for (i, entry) in m.files.iter().enumerate() {
            if let Some(target) = install_target(self.site, entry) {
                self.step("backup installed", &target.display().to_string())?;
                record.installed.push(backup::backup_file(
                    &dir,
                    &format!("installed/{i}-{}", entry.path.file_name()),
                    &target,
                )?);
            }
        }
        self.step("backup complete", &dir.display().to_string())?;
        backup::complete(&dir, &record)?;
        done.backup = Some((dir, record));
        Ok(())
    }

    fn install(&self, done: &mut Done) -> Result<(), String> {
        let Some((_, record)) = &done.backup else {
            return Err("no backup".into());
        };
        let records = record.installed.clone();
        let mut targets = records.into_iter();
        for entry in &self.manifest().files {
            let Some(target) = install_target(self.site, entry) else {
                continue;
            };
            let rec = targets
                .next()
                .ok_or("backup does not list every install target")?;
            self.step(
                "install",
                &format!("{} -> {}", entry.path, target.display()),
            )?;
            // Counted before the write: a half-done rename is still restored.
            done.installed.push(rec);
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
                self.step(
                    "migrate",
                    &format!("{database} {} {}", info.version, info.description),
                )?;
                done.migrated.insert(database.to_owned());
                let sql = std::fs::read_to_string(entry.path.join_to(&self.stage_dir))
                    .map_err(|e| format!("reading staged `{}`: {e}", entry.path))?;
                migrate::apply_one(path, database, entry, info, &sql, &m.version.to_string())?;
                applied.push(format!("{database}:{}", info.version));
            }
        }
        Ok(applied)
    }

    /// Decides what happens to the Raft data on rollback (DESIGN.md, safety
    /// invariants): unchanged since the backup, nothing to do; changed while
    /// the member never ran, restored; changed because the member ran the new
    /// version, never restored (it may hold acknowledged entries its cluster
    /// relies on), and the old version starts on it only when the bundle
    /// declares that both versions run side by side.
    fn settle_raft(
        &self,
        dir: &Path,
        raft: &backup::TreeRecord,
        started: bool,
    ) -> Result<(), String> {
        let diff = backup::diff_tree(raft)?;
        let folder = raft.source.display();
        if diff.is_empty() {
            self.reporter.event(
                "raft data",
                "ok",
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
            self.reporter
                .event("restore raft", "ok", &format!("{n} file(s) restored"));
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
        Err(format!(
            "the Raft data in `{folder}` changed while {v} ran ({n} file(s)) and this bundle does not allow mixed versions, so the old version may not read it; \
             airlock does not restore it, because a member that forgets acknowledged entries can break its cluster. \
             Safe procedure: remove this member from its cluster, clear its data directory and add it back so it copies the current data from the leader \
             (etcd: `etcdctl member remove`, then `member add`); for a single-member cluster, start {v} again or restore the cluster from a snapshot",
            v = m.version,
            n = diff.len(),
        ))
    }

    /// Undoes what `done` lists and starts the old version. Returns what could not be undone.
    fn rollback(&self, done: &Done) -> Vec<String> {
        let mut problems = Vec::new();
        let old = &self.verified.installed.version;
        self.reporter
            .event("rollback", "start", &format!("back to {old}"));
        let _ = self
            .state
            .journal(self.apply_id, "rollback", &format!("back to {old}"));
        if done.started || done.stopped {
            // The new version may be half up; make sure nothing runs before restoring.
            if let Err(e) = self.stop() {
                if done.started {
                    problems.push(format!("stopping the new version: {e}"));
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
        } else if !done.installed.is_empty() || !done.migrated.is_empty() {
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
}

/// Applies the bundle at `bundle` to the node `site` describes.
///
/// # Errors
/// [`ApplyError::Refused`] or [`ApplyError::Preflight`] when nothing changed;
/// [`ApplyError::RolledBack`] when a step failed and the old version runs again;
/// [`ApplyError::NeedsOperator`] when the rollback did not complete.
pub fn apply(
    site: &Site,
    bundle: &Path,
    opts: VerifyOptions,
    reporter: &Reporter,
) -> Result<ApplyReport, ApplyError> {
    let _lock = lock(site)?;
    reporter.event(
        "lock",
        "ok",
        &site
            .profile
            .paths
            .state_dir
            .join(LOCK_FILE)
            .display()
            .to_string(),
    );
    let mut state = State::open(&site.profile.paths.state_dir)?;

    // Authenticate and check the header first (no payload read), so the
    // disk-space check knows the sizes before anything is written.
    reporter.event("verify", "start", &bundle.display().to_string());
    let header_only = read_and_verify(site, Some(&state), bundle, opts, None)
        .inspect_err(|e| audit_refusal(&state, bundle, e))?;
    let m = &header_only.header.manifest;
    reporter.event(
        "verify",
        "ok",
        &format!(
            "{} {} -> {}, signed by {}",
            m.name,
            header_only.installed.version,
            m.version,
            header_only.signers_text()
        ),
    );
    check_space(site, m, reporter)?;

    let apply_id = state.begin_apply(
        &bundle.display().to_string(),
        "",
        &m.name,
        &header_only.installed.version.to_string(),
        &m.version.to_string(),
    )?;
    let stage_dir = site.staging_dir().join(format!("apply-{apply_id}"));
    state.journal(apply_id, "stage", &stage_dir.display().to_string())?;
    reporter.event("stage", "start", &stage_dir.display().to_string());
    let bar = if reporter_is_human_terminal() {
        indicatif::ProgressBar::new(m.payload.unpacked_size)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let bar_handle = bar.clone();
    let mut sink = StageSink::create(&stage_dir, Box::new(move |n| bar_handle.inc(n))).map_err(
        ApplyError::io(format!("creating staging folder `{}`", stage_dir.display())),
    )?;
    let staged = read_and_verify(site, Some(&state), bundle, opts, Some(&mut sink));
    bar.finish_and_clear();
    let verified = match staged {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&stage_dir);
            let label = if matches!(e, ApplyError::Refused { .. }) {
                "refused"
            } else {
                "failed"
            };
            let _ = state.finish_apply_simple(apply_id, label, &e.to_string());
            audit_refusal(&state, bundle, &e);
            return Err(e);
        }
    };
    state.set_bundle_sha256(apply_id, &verified.bundle_sha256.to_hex())?;
    reporter.event(
        "stage",
        "ok",
        &format!(
            "{} files, {} bytes, every SHA-256 matched",
            verified.header.manifest.files.len(),
            verified.header.manifest.payload.unpacked_size
        ),
    );

    let env = vec![
        (
            "AIRLOCK_FROM_VERSION",
            verified.installed.version.to_string(),
        ),
        (
            "AIRLOCK_TO_VERSION",
            verified.header.manifest.version.to_string(),
        ),
        ("AIRLOCK_BUNDLE", bundle.display().to_string()),
        ("AIRLOCK_STAGE_DIR", stage_dir.display().to_string()),
    ];
    let mut run = Run {
        site,
        state,
        reporter,
        apply_id,
        verified,
        stage_dir,
        env,
    };
    let result = run_steps(&mut run);
    let _ = std::fs::remove_dir_all(&run.stage_dir);
    result
}

fn reporter_is_human_terminal() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal()
}

fn audit_refusal(state: &State, bundle: &Path, e: &ApplyError) {
    let _ = state.audit(&AuditEntry {
        action: "apply".into(),
        bundle: Some(bundle.display().to_string()),
        outcome: if matches!(e, ApplyError::Refused { .. }) {
            "refused"
        } else {
            "failed"
        }
        .into(),
        error: Some(e.to_string()),
        ..Default::default()
    });
}

fn check_space(site: &Site, m: &Manifest, reporter: &Reporter) -> Result<(), ApplyError> {
    let data = &site.profile.data;
    let mut backup_need: u64 = data
        .databases
        .values()
        .map(|p| {
            stage::tree_size(p) + stage::tree_size(&PathBuf::from(format!("{}-wal", p.display())))
        })
        .sum();
    backup_need += data.raft_dir.as_deref().map_or(0, stage::tree_size);
    backup_need += data
        .config_files
        .iter()
        .map(|p| stage::tree_size(p))
        .sum::<u64>();
    backup_need += m
        .files
        .iter()
        .filter_map(|e| install_target(site, e))
        .map(|p| stage::tree_size(&p))
        .sum::<u64>();
    let staging = site.staging_dir();
    let backups = &site.profile.paths.backup_dir;
    let stage_need = m.payload.unpacked_size;
    let mut needs = vec![(staging.clone(), stage_need, "staging")];
    if stage::device_of(&staging) == stage::device_of(backups) {
        needs[0].1 += backup_need;
        needs[0].2 = "staging and backups";
    } else {
        needs.push((backups.clone(), backup_need, "backups"));
    }
    for (dir, need, what) in needs {
        let available = stage::available_space(&dir).map_err(ApplyError::io(format!(
            "checking free space at `{}`",
            dir.display()
        )))?;
        let need = with_margin(need);
        if available < need {
            return Err(ApplyError::Preflight {
                step: "disk space check".into(),
                reason: format!(
                    "{what} need {} MiB at `{}` but only {} MiB are free; free space there or point paths.backup_dir / paths.staging_dir elsewhere",
                    need / (1 << 20),
                    dir.display(),
                    available / (1 << 20)
                ),
            });
        }
        reporter.event(
            "disk space",
            "ok",
            &format!(
                "{what}: need {} MiB, {} MiB free at {}",
                need >> 20,
                available >> 20,
                dir.display()
            ),
        );
    }
    Ok(())
}

fn run_steps(run: &mut Run<'_>) -> Result<ApplyReport, ApplyError> {
    let m = run.manifest().clone();
    let old = run.verified.installed.version.clone();
    let signers = run.verified.signers_text();
    let sha = run.verified.bundle_sha256.to_hex();
    let bundle_name = run.verified.bundle.display().to_string();
    let audit = |state: &State, outcome: &str, error: Option<String>| {
        let _ = state.audit(&AuditEntry {
            action: "apply".into(),
            bundle: Some(bundle_name.clone()),
            version: Some(m.version.to_string()),
            bundle_sha256: Some(sha.clone()),
            signers: Some(signers.clone()),
            outcome: outcome.into(),
            error,
        });
    };

    // Before the stop, a failure changes nothing.
    if let Err(reason) = run.run_hook("pre_stop") {
        let e = ApplyError::Preflight {
            step: "pre_stop hook".into(),
            reason,
        };
        let _ = run
            .state
            .finish_apply_simple(run.apply_id, "failed", &e.to_string());
        audit(&run.state, "failed", Some(e.to_string()));
        return Err(e);
    }

    let mut done = Done::default();
    let mut migrations = Vec::new();
    let mut downtime_start = std::time::Instant::now();
    let outcome: Result<(), (String, String)> = (|| {
        run.step("stop", &run.site.profile.service.stop)
            .map_err(|e| ("stop".to_string(), e))?;
        done.stopped = true;
        downtime_start = std::time::Instant::now();
        run.stop().map_err(|e| ("stop".to_string(), e))?;
        run.reporter.event("stop", "ok", "service is down");
        run.backup(&mut done)
            .map_err(|e| ("backup".to_string(), e))?;
        run.reporter.event(
            "backup",
            "ok",
            &done
                .backup
                .as_ref()
                .map(|b| b.0.display().to_string())
                .unwrap_or_default(),
        );
        run.install(&mut done)
            .map_err(|e| ("install".to_string(), e))?;
        migrations = run
            .migrate(&mut done)
            .map_err(|e| ("migrate".to_string(), e))?;
        run.step("start", &run.site.profile.service.start)
            .map_err(|e| ("start".to_string(), e))?;
        done.started = true;
        run.start(&m.version)
            .map_err(|e| ("start".to_string(), e))?;
        run.reporter.event(
            "health",
            "ok",
            &format!(
                "{} is healthy and reports {}",
                run.site.profile.service.name, m.version
            ),
        );
        run.run_hook("post_start")
            .map_err(|e| ("post_start hook".to_string(), e))?;
        Ok(())
    })();
    let downtime = downtime_start.elapsed();

    if let Err((step, reason)) = outcome {
        run.reporter.event(&step, "failed", &reason);
        let problems = run.rollback(&done);
        let error = if problems.is_empty() {
            ApplyError::RolledBack {
                version: m.version.to_string(),
                old_version: old.to_string(),
                step,
                reason,
            }
        } else {
            ApplyError::NeedsOperator {
                version: m.version.to_string(),
                step,
                reason,
                rollback: problems.join("; "),
            }
        };
        let outcome = if matches!(error, ApplyError::RolledBack { .. }) {
            "rolled-back"
        } else {
            "needs-operator"
        };
        let _ = run
            .state
            .finish_apply_simple(run.apply_id, outcome, &error.to_string());
        audit(&run.state, outcome, Some(error.to_string()));
        let (status, summary) = if problems.is_empty() {
            ("ok", format!("the node runs {old} again, healthy"))
        } else {
            ("failed", format!("incomplete: {}", problems.join("; ")))
        };
        run.reporter.event("rollback", status, &summary);
        return Err(error);
    }

    let committed = run.step("commit", &m.version.to_string()).and_then(|()| {
        run.state
            .finish_apply(run.apply_id, "ok", None, Some((&m.name, &m.version, &sha)))
            .map_err(|e| e.to_string())
    });
    if let Err(reason) = committed {
        // The new version runs and is healthy; only recording it failed.
        // Rolling a healthy node back for that would cost more than it saves.
        return Err(ApplyError::NeedsOperator {
            version: m.version.to_string(),
            step: "commit".into(),
            reason,
            rollback: format!(
                "not attempted: {} runs and is healthy, but the state database still names {old}; repair the state database before the next apply",
                m.version
            ),
        });
    }
    audit(&run.state, "ok", None);
    let backup_dir = done
        .backup
        .as_ref()
        .map(|b| b.0.clone())
        .unwrap_or_default();
    match backup::prune(
        &run.site.profile.paths.backup_dir,
        run.site.profile.paths.keep_backups,
        &backup_dir,
    ) {
        Ok(removed) if !removed.is_empty() => {
            run.reporter
                .event("prune backups", "ok", &format!("removed {}", removed.len()))
        }
        Ok(_) => {}
        Err(e) => run.reporter.event("prune backups", "failed", &e),
    }
    run.reporter.event(
        "commit",
        "ok",
        &format!("{} {} installed", m.name, m.version),
    );
    Ok(ApplyReport {
        from: old,
        to: m.version.clone(),
        backup_dir,
        migrations,
        downtime,
    })
}
