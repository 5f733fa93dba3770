//! An apply as one transaction (docs/ARCHITECTURE.md, "The transaction").
//!
//! [`step::planned_steps`] lists the steps; [`Transaction::run`] executes
//! them in order. Each step is written to the journal (synced) with its
//! [`undo::Undo`] record before it acts, then marked done or failed. When a
//! step fails after the node changed, the undo records of every step that
//! began are replayed newest first; `resume` rebuilds the same list from the
//! journal with [`journal::fold`], and `rollback` replays a completed
//! apply's list. [`outcome`] is the one place that records how it ended.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_formats::durable::{create_private_dir, remove_temps_beside};
use airlock_formats::{shown, BundlePath, Direction, FileEntry, Manifest};
use semver::Version;

use crate::error::{ApplyError, StepError};
use crate::interrupt::Interrupt;
use crate::protocol::{label, Status};
use crate::report::Reporter;
use crate::site::Site;
use crate::state::{ApplyRecord, AuditAction, RowState, State};
use crate::steps::backup::{self, BackupManifest};
use crate::steps::install::install;
use crate::steps::migrate;
use crate::steps::precopy::PreCopies;
use crate::steps::service::ServiceControl;
use crate::steps::stage::StageSink;
use crate::steps::tree::{self, TreeInstall};
use crate::verify::{read_and_verify, VerifyOptions};

pub mod journal;
pub mod outcome;
pub mod step;
pub mod undo;

use journal::Entry;
use outcome::Failure;
use step::{Staging, Step};
use undo::Undo;

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
    /// Time from the stop to the new version healthy with its hook done.
    pub downtime: Duration,
    /// The apply's log file.
    pub log: PathBuf,
}

/// The bundle a transaction stages from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The bundle file.
    pub bundle: PathBuf,
    /// How it was verified.
    pub opts: VerifyOptions,
}

/// One apply, resume or rollback in progress on this node.
pub struct Transaction<'a> {
    site: &'a Site,
    state: State,
    reporter: &'a Reporter,
    interrupt: &'a Interrupt,
    action: AuditAction,
    record: ApplyRecord,
    manifest: Manifest,
    old: Version,
    new: Version,
    env: Vec<(String, String)>,
    stage_dir: PathBuf,
    backup_dir: PathBuf,
    source: Option<Source>,
    /// What the backup steps copied so far (written as `backup.json`).
    backup: BackupManifest,
    /// Undo records of the steps that began, oldest first.
    undo: Vec<Undo>,
    node_changed: bool,
    migrations: Vec<String>,
    /// The connection migrations of one database run on, as their tool
    /// runs them all on one; closed by the first step that is not one of them.
    session: Option<migrate::Session>,
    /// The steps [`Transaction::run`] was given: the stage step routes
    /// what installs by rename to beside its target from them.
    plan: Vec<Step>,
    /// The install steps' progress bar, over the files they install: made
    /// at the first.
    install_bar: Option<indicatif::ProgressBar>,
    stopped_at: Option<Instant>,
    healthy_at: Option<Instant>,
    /// What the pre-copy steps saw of the live files they copied.
    precopies: PreCopies,
    /// `PRAGMA integrity_check` of each database's backup, running beside
    /// the steps after its backup step; joined before the backup completes.
    checks: Vec<std::thread::JoinHandle<Result<(), StepError>>>,
    /// Where the word `go` comes from before the service stops
    /// (`apply --wait-for-go`); taken when the transaction waits for it.
    gate: Option<Box<dyn std::io::BufRead + 'a>>,
}

/// Why an apply record cannot be picked up: its stored manifest or versions
/// do not parse.
#[derive(Debug, thiserror::Error)]
#[error("apply #{id}: {what}")]
pub struct Unreadable {
    /// The apply.
    pub id: i64,
    /// What is wrong.
    pub what: String,
}

impl<'a> Transaction<'a> {
    /// A transaction over the apply `record` (just begun, interrupted, or a
    /// `rollback` command's), with the manifest it stored; `action` is the
    /// command, for the audit log.
    ///
    /// # Errors
    /// [`Unreadable`] (with the state back) when the stored manifest or a
    /// version does not parse.
    pub fn new(
        site: &'a Site,
        state: State,
        reporter: &'a Reporter,
        interrupt: &'a Interrupt,
        action: AuditAction,
        record: ApplyRecord,
    ) -> Result<Self, Box<(State, Unreadable)>> {
        let unreadable = |what: String| Unreadable {
            id: record.id,
            what,
        };
        let parsed = Manifest::from_json(record.manifest_json.as_bytes())
            .map_err(|e| unreadable(format!("stored manifest: {e}")))
            .and_then(|manifest| {
                let version = |text: &str, which: &str| {
                    Version::parse(text)
                        .map_err(|e| unreadable(format!("{which} version `{text}`: {e}")))
                };
                Ok((
                    manifest,
                    version(&record.from_version, "from")?,
                    version(&record.to_version, "to")?,
                ))
            });
        let (manifest, old, new) = match parsed {
            Ok(p) => p,
            Err(e) => return Err(Box::new((state, e))),
        };
        let stage_dir = site.staging_dir().join(format!("apply-{}", record.id));
        let mut env = vec![
            ("AIRLOCK_FROM_VERSION".to_string(), old.to_string()),
            ("AIRLOCK_TO_VERSION".to_string(), new.to_string()),
            ("AIRLOCK_BUNDLE".to_string(), record.bundle.clone()),
            (
                "AIRLOCK_STAGE_DIR".to_string(),
                stage_dir.display().to_string(),
            ),
        ];
        // What a data-format migration (the pre_start hook) works on
        // (docs/SITE.md, "Hooks").
        if let Some(raft) = &site.profile.data.raft_dir {
            env.push(("AIRLOCK_RAFT_DIR".into(), raft.display().to_string()));
        }
        for (name, path) in &site.profile.data.databases {
            let var: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            env.push((format!("AIRLOCK_DB_{var}"), path.display().to_string()));
        }
        let backup = BackupManifest {
            format: "airlock-backup/1".into(),
            from_version: old.to_string(),
            to_version: new.to_string(),
            bundle: Path::new(&record.bundle)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ..BackupManifest::default()
        };
        Ok(Self {
            site,
            state,
            reporter,
            interrupt,
            action,
            backup_dir: record
                .backup_dir
                .clone()
                .map(PathBuf::from)
                .unwrap_or_default(),
            record,
            manifest,
            old,
            new,
            env,
            stage_dir,
            source: None,
            backup,
            undo: Vec::new(),
            node_changed: false,
            migrations: Vec::new(),
            session: None,
            plan: Vec::new(),
            install_bar: None,
            stopped_at: None,
            healthy_at: None,
            precopies: PreCopies::new(),
            checks: Vec::new(),
            gate: None,
        })
    }

    /// Before its first step that stops the service or runs the pre_stop
    /// hook, the transaction reads one line from `gate` and goes on only
    /// when it is `go` (`apply --wait-for-go`, which a rolling upgrade's
    /// coordinator uses to stage and pre-copy the next node while the one
    /// before it upgrades; docs/OPERATIONS.md, "Rolling upgrade"). Any
    /// other line, or the end of the input, ends the apply there: its
    /// staging folder and pre-copies are removed and the node is unchanged.
    pub fn with_gate(mut self, gate: Box<dyn std::io::BufRead + 'a>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Waits at the gate, if any, before `step`: `Ok` to go on.
    fn pass_gate(&mut self, step: &Step) -> Result<(), StepError> {
        if !matches!(step, Step::PreStopHook { .. } | Step::Stop { .. }) {
            return Ok(());
        }
        let Some(mut gate) = self.gate.take() else {
            return Ok(());
        };
        self.reporter.event(
            label::WAIT_FOR_GO,
            Status::Start,
            "verified, staged and pre-copied; the service runs until the coordinator says go",
        );
        let mut line = String::new();
        let heard = match gate.read_line(&mut line) {
            Ok(0) => "the end of its input".to_owned(),
            Ok(_) if line.trim() == "go" => {
                self.reporter.event(label::WAIT_FOR_GO, Status::Ok, "go");
                return Ok(());
            }
            Ok(_) => format!("`{}`", shown(line.trim())),
            Err(e) => format!("an unreadable input ({e})"),
        };
        Err(StepError::NoGo { heard })
    }

    /// Carries on an interrupted apply whose journal left these undo records
    /// (`resume`): a failure from here undoes them too, and the commit
    /// finds the trees the apply replaced.
    pub fn with_undo(mut self, undo: Vec<Undo>, node_changed: bool) -> Self {
        self.undo = undo;
        self.node_changed = node_changed;
        self
    }

    /// Stages from `source` (the apply command's bundle).
    pub fn with_source(mut self, source: Source) -> Self {
        self.source = Some(source);
        self
    }

    /// The apply record.
    pub fn record(&self) -> &ApplyRecord {
        &self.record
    }

    /// The signed manifest of the bundle this transaction installs.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The version this transaction installs.
    pub fn new_version(&self) -> &Version {
        &self.new
    }

    /// Writes a journal row that needs no undo (`resume`, `rollback of`).
    ///
    /// # Errors
    /// [`crate::state::StateError`].
    pub(crate) fn journal(&mut self, entry: &Entry) -> Result<(), crate::state::StateError> {
        let seq = self.state.journal_begin(self.record.id, entry, None)?;
        self.state
            .journal_end(self.record.id, seq, RowState::Done, None, None)
    }

    /// The journal of apply `apply_id` (for a `rollback`: the apply it undoes).
    ///
    /// # Errors
    /// [`crate::state::StateError`].
    pub(crate) fn journal_rows(
        &self,
        apply_id: i64,
    ) -> Result<Vec<crate::state::JournalRow>, crate::state::StateError> {
        self.state.journal(apply_id)
    }

    /// Makes sure the new version runs, healthy and reporting its version:
    /// starts it if it does not (after an interruption past the point of no
    /// return).
    ///
    /// # Errors
    /// Why it could not be started.
    pub(crate) fn ensure_new_running(&self) -> Result<(), StepError> {
        let control = self.control();
        control
            .wait_ready(&self.new)
            .or_else(|_| control.start_and_wait(&self.new))
    }

    fn control(&self) -> ServiceControl<'_> {
        ServiceControl::new(self.site, &self.env)
    }

    fn push_undo(&mut self, undo: Undo) {
        if !self.undo.contains(&undo) {
            self.undo.push(undo);
        }
    }

    /// Executes `steps` in order. When one fails, undoes what began and
    /// records the outcome; when all succeed, the last (the commit) recorded it.
    ///
    /// # Errors
    /// [`ApplyError::Refused`] or [`ApplyError::Preflight`] when it failed
    /// before the node changed; [`ApplyError::RolledBack`] when it was undone;
    /// [`ApplyError::NeedsOperator`] when the undo did not complete, or the
    /// commit could not be recorded.
    pub fn run(mut self, steps: &[Step]) -> Result<ApplyReport, ApplyError> {
        self.plan = steps.to_vec();
        for step in steps {
            if let Err(cause) = self.execute(step) {
                return Err(self.fail(step, cause));
            }
        }
        let downtime = match (self.stopped_at, self.healthy_at) {
            (Some(a), Some(b)) => b.duration_since(a),
            _ => Duration::ZERO,
        };
        Ok(ApplyReport {
            from: self.old.clone(),
            to: self.new.clone(),
            backup_dir: self.backup_dir.clone(),
            migrations: self.migrations.clone(),
            downtime,
            log: self.site.log_path(self.record.id),
        })
    }

    /// Journals `step` with the undo it needs once begun, reports it, acts,
    /// and marks it done or failed.
    fn execute(&mut self, step: &Step) -> Result<(), StepError> {
        if !matches!(step, Step::Migrate { .. }) {
            self.session = None;
        }
        if step.stops_on_signal() && self.interrupt.requested() {
            return Err(StepError::Interrupted);
        }
        self.pass_gate(step)?;
        if step.stops_on_signal() && self.interrupt.requested() {
            return Err(StepError::Interrupted);
        }
        let undo = self.undo_before(step)?;
        let entry = Entry::Step { step: step.clone() };
        let seq = self
            .state
            .journal_begin(self.record.id, &entry, undo.as_ref())?;
        if let Some(undo) = undo {
            self.push_undo(undo);
        }
        self.node_changed |= step.changes_node();
        match step {
            Step::Stop { .. } => self.stopped_at = Some(Instant::now()),
            Step::Healthy { .. } => self.healthy_at = Some(Instant::now()),
            _ => {}
        }
        self.reporter.step(step, Status::Start, &step.describe());
        failpoint!(step.failpoint());
        let copying = self.copy_progress(step);
        if matches!(step, Step::Install { .. }) && self.install_bar.is_none() {
            let installs = self
                .plan
                .iter()
                .filter(|s| matches!(s, Step::Install { .. }))
                .count();
            let bar = self.reporter.progress_items(installs as u64);
            bar.set_prefix("install");
            self.install_bar = Some(bar);
        }
        let acted = self.act(step);
        drop(copying);
        if let Some(bar) = &self.install_bar {
            if matches!(step, Step::Install { .. }) {
                bar.inc(1);
            }
            if acted.is_err() || bar.position() >= bar.length().unwrap_or(0) {
                bar.finish_and_clear();
            }
        }
        match acted {
            Ok((detail, undo)) => {
                if let Some(undo) = &undo {
                    self.push_undo(undo.clone());
                }
                let ended = self.state.journal_end(
                    self.record.id,
                    seq,
                    RowState::Done,
                    undo.as_ref(),
                    None,
                );
                self.reporter.step(step, Status::Ok, &detail);
                ended.map_err(StepError::from)
            }
            Err(e) => {
                let _ = self.state.journal_end(
                    self.record.id,
                    seq,
                    RowState::Failed,
                    None,
                    Some(&e.to_string()),
                );
                self.reporter.step(step, Status::Failed, &e.to_string());
                Err(e)
            }
        }
    }

    /// A progress bar for a step that copies into the backup, over the
    /// bytes of what it copies (docs/OPERATIONS.md, "Reading the output").
    fn copy_progress(&self, step: &Step) -> Option<crate::report::Polling> {
        // Sizing a Raft folder costs a walk of it: only for a bar drawn.
        if !self.reporter.draws_progress() {
            return None;
        }
        let size = |p: &Path| fs_err::metadata(p).map_or(0, |m| m.len());
        let tree = |dir: &Path| -> u64 {
            walkdir::WalkDir::new(dir)
                .into_iter()
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len())
                .sum()
        };
        let total = match step {
            Step::PreCopyDatabase { path, .. } | Step::BackupDatabase { path, .. } => size(path),
            Step::PreCopyRaft { dir } | Step::BackupRaft { dir } => tree(dir),
            Step::PreCopyFiles { config, installed } => {
                config.iter().chain(installed).map(|p| size(p)).sum()
            }
            _ => return None,
        };
        if total == 0 {
            return None;
        }
        Some(
            self.reporter
                .progress_polling(total, step.label(), backup::copied_bytes),
        )
    }

    /// The undo record a step needs as soon as it begins: it is journaled
    /// with the announcement, so a step cut off halfway is undone too.
    fn undo_before(&self, step: &Step) -> Result<Option<Undo>, StepError> {
        Ok(match step {
            Step::Stage { .. } => Some(Undo::RemoveStaging {
                dir: self.stage_dir.clone(),
                beside: self.staged_beside(),
            }),
            Step::InstallTree { tree, target, .. } => {
                let staged = self.tree_staged(step);
                Some(Undo::RestoreTree {
                    install: TreeInstall {
                        name: tree.clone(),
                        target: target.clone(),
                        new: tree::identity(&staged)?,
                        old: tree::old_beside(target, self.record.id),
                        staged,
                        existed: tree::identity(target)?.is_some(),
                    },
                    backup: self.backup_dir.clone(),
                })
            }
            Step::PreStartHook { .. } => {
                // The hook may change any database: each one no migration
                // claimed is restored too on rollback.
                let claimed: Vec<&str> = self.undo.iter().flat_map(Undo::databases).collect();
                let records: Vec<_> = self
                    .backup
                    .databases
                    .iter()
                    .filter(|r| !claimed.contains(&r.name.as_str()))
                    .cloned()
                    .collect();
                (!records.is_empty()).then(|| Undo::RestoreDatabases {
                    backup: self.backup_dir.clone(),
                    records,
                })
            }
            Step::PreCopyDatabase { .. } | Step::PreCopyRaft { .. } | Step::PreCopyFiles { .. } => {
                let backup = self.backup_dir.clone();
                let first = !self
                    .undo
                    .iter()
                    .any(|u| matches!(u, Undo::RemovePreCopies { .. }));
                first.then_some(Undo::RemovePreCopies { backup })
            }
            Step::Stop { .. } => Some(Undo::StartOld {
                version: self.old.clone(),
            }),
            Step::Install { target, .. } => {
                let record = self
                    .backup
                    .installed
                    .iter()
                    .find(|r| &r.source == target)
                    .ok_or_else(|| StepError::NotBackedUp {
                        path: target.clone(),
                    })?;
                Some(Undo::of_install(self.backup_dir.clone(), record.clone()))
            }
            Step::Migrate { database, .. } => {
                let record = self
                    .backup
                    .databases
                    .iter()
                    .find(|r| &r.name == database)
                    .ok_or_else(|| StepError::NotBackedUp {
                        path: self
                            .site
                            .profile
                            .data
                            .databases
                            .get(database)
                            .cloned()
                            .unwrap_or_else(|| PathBuf::from(database)),
                    })?;
                Some(Undo::of_migration(self.backup_dir.clone(), record.clone()))
            }
            Step::Start { .. } => Some(Undo::StopNew),
            _ => None,
        })
    }

    /// Where the stage step puts tree `step` (an `install tree` step).
    fn tree_staged(&self, step: &Step) -> PathBuf {
        match step {
            Step::InstallTree {
                target,
                staging: Staging::Beside,
                ..
            } => tree::staged_beside(target, self.record.id),
            Step::InstallTree { tree, .. } => self.stage_dir.join("trees").join(tree),
            _ => self.stage_dir.clone(),
        }
    }

    /// Everything the stage step writes beside its target.
    fn staged_beside(&self) -> Vec<PathBuf> {
        self.plan
            .iter()
            .filter_map(|step| match step {
                Step::Install {
                    target,
                    staging: Staging::Beside,
                    ..
                }
                | Step::InstallTree {
                    target,
                    staging: Staging::Beside,
                    ..
                } => Some(tree::staged_beside(target, self.record.id)),
                _ => None,
            })
            .collect()
    }

    fn ensure_backup_dir(&self) -> Result<(), StepError> {
        Ok(create_private_dir(&self.backup_dir)?)
    }

    fn entry(&self, file: &str) -> Result<&FileEntry, StepError> {
        self.manifest
            .files
            .iter()
            .find(|e| e.path.as_str() == file)
            .ok_or_else(|| StepError::Inconsistent {
                what: format!("`{file}` is not in the signed manifest"),
            })
    }

    /// Does what `step` says. Returns the detail to report and, for a backup,
    /// the undo record it leaves on completing.
    fn act(&mut self, step: &Step) -> Result<(String, Option<Undo>), StepError> {
        let none = |detail: String| Ok((detail, None));
        match step {
            Step::Stage { files, bytes } => self.stage(*files, *bytes).map(|d| (d, None)),
            Step::PreStopHook { .. } | Step::PostStartHook { .. } => {
                let (what, hook) = match step {
                    Step::PreStopHook { .. } => ("pre_stop hook", &self.manifest.hooks.pre_stop),
                    _ => ("post_start hook", &self.manifest.hooks.post_start),
                };
                if let Some(script) = hook {
                    self.control()
                        .hook(what, &script.join_to(&self.stage_dir))?;
                }
                none(String::new())
            }
            Step::PreCopyDatabase { name, path } => {
                self.ensure_backup_dir()?;
                match backup::precopy_database(&self.backup_dir, name, path)? {
                    Some((bytes, seen)) => {
                        self.precopies.extend(seen.map(|s| (path.clone(), s)));
                        none(format!(
                            "{name} ({}): {}",
                            path.display(),
                            airlock_formats::shown::bytes(bytes)
                        ))
                    }
                    None => none(format!("{name} ({}) does not exist", path.display())),
                }
            }
            Step::PreCopyRaft { dir } => {
                self.ensure_backup_dir()?;
                let (seen, bytes) = backup::precopy_tree(&self.backup_dir, "raft", dir)?;
                let detail = airlock_formats::shown::bytes(bytes);
                self.precopies.extend(seen);
                none(detail)
            }
            Step::PreCopyFiles { config, installed } => {
                self.ensure_backup_dir()?;
                let mut bytes = 0;
                let files = config
                    .iter()
                    .enumerate()
                    .map(|(n, p)| (backup::file_rel("config", n, p), p))
                    .chain(
                        installed
                            .iter()
                            .enumerate()
                            .map(|(n, p)| (backup::file_rel("installed", n, p), p)),
                    );
                for (rel, path) in files {
                    if let Some((n, seen)) = backup::precopy_single(&self.backup_dir, &rel, path)? {
                        bytes += n;
                        self.precopies.extend(seen.map(|s| (path.clone(), s)));
                    }
                }
                none(airlock_formats::shown::bytes(bytes))
            }
            Step::Stop { .. } => {
                self.control().stop()?;
                none("service is down".into())
            }
            Step::BackupDatabase { name, path } => {
                self.ensure_backup_dir()?;
                let (rec, how) =
                    backup::backup_database(&self.backup_dir, name, path, &self.precopies)?;
                let detail = format!(
                    "{name} ({}): {}, {}; integrity_check runs beside the next steps",
                    path.display(),
                    airlock_formats::shown::bytes(rec.size),
                    how.describe()
                );
                if let Some(rel) = &rec.file {
                    let (name, copy) = (name.clone(), self.backup_dir.join(rel));
                    self.checks.push(std::thread::spawn(move || {
                        backup::check_integrity(&name, &copy)
                    }));
                }
                self.backup.databases.push(rec);
                none(detail)
            }
            Step::BackupRaft { dir } => {
                self.ensure_backup_dir()?;
                let (rec, sync) =
                    backup::backup_tree(&self.backup_dir, "raft", dir, &self.precopies)?;
                let detail = format!(
                    "{} files, {}: {sync}",
                    rec.files.len(),
                    airlock_formats::shown::bytes(rec.files.iter().map(|f| f.size).sum::<u64>())
                );
                self.backup.raft = Some(rec.clone());
                Ok((
                    detail,
                    Some(Undo::SettleRaft {
                        backup: self.backup_dir.clone(),
                        record: rec,
                    }),
                ))
            }
            Step::BackupConfig { path } => {
                let rec = self.backup_copy("config", self.backup.config_files.len(), path)?;
                self.backup.config_files.push(rec);
                none(path.display().to_string())
            }
            Step::BackupInstalled { target } => {
                let rec = self.backup_copy("installed", self.backup.installed.len(), target)?;
                self.backup.installed.push(rec);
                none(target.display().to_string())
            }
            Step::BackupComplete => {
                self.ensure_backup_dir()?;
                let checks = std::mem::take(&mut self.checks);
                let count = checks.len();
                for check in checks {
                    check.join().map_err(|_| StepError::Inconsistent {
                        what: "the integrity check of a database backup panicked".into(),
                    })??;
                }
                self.backup.created_at = crate::state::now();
                backup::complete(&self.backup_dir, &self.backup)?;
                none(format!(
                    "{}; integrity_check ok for {count} database(s)",
                    self.backup_dir.display()
                ))
            }
            Step::Install {
                file,
                target,
                mode,
                staging,
            } => {
                let entry = self.entry(file)?.clone();
                let how = install(
                    &self.stage_dir,
                    &entry,
                    target,
                    *mode,
                    *staging,
                    self.record.id,
                )?;
                none(format!("{file} -> {}: {how}", target.display()))
            }
            Step::InstallTree { tree, target, .. } => {
                let staged = self.tree_staged(step);
                let how =
                    tree::install(&staged, target, &tree::old_beside(target, self.record.id))?;
                none(format!("{tree} -> {}: {how}", target.display()))
            }
            Step::PreStartHook { script, .. } => {
                let path = BundlePath::parse(script).map_err(|e| StepError::Inconsistent {
                    what: e.to_string(),
                })?;
                self.control()
                    .hook("pre_start hook", &path.join_to(&self.stage_dir))?;
                none(String::new())
            }
            Step::Migrate {
                database,
                file,
                action,
                ..
            } => {
                let entry = self.entry(file)?.clone();
                let migrations =
                    self.manifest
                        .migrations(database)
                        .map_err(|e| StepError::Inconsistent {
                            what: e.to_string(),
                        })?;
                let migration = migrations
                    .iter()
                    .find(|m| m.entry.path == entry.path && m.direction == Direction::Up)
                    .ok_or_else(|| StepError::Inconsistent {
                        what: format!("`{file}` is not an up migration of `{database}` in the signed manifest"),
                    })?;
                let path = self
                    .site
                    .profile
                    .data
                    .databases
                    .get(database)
                    .cloned()
                    .ok_or_else(|| StepError::UnknownDatabase {
                        database: database.clone(),
                    })?;
                let sql = fs_err::read_to_string(entry.path.join_to(&self.stage_dir))?;
                if self
                    .session
                    .as_ref()
                    .is_none_or(|s| s.database() != database)
                {
                    self.session = None;
                    self.session = Some(migrate::Session::open(database, &path, migration)?);
                }
                let session = self
                    .session
                    .as_mut()
                    .ok_or_else(|| StepError::Inconsistent {
                        what: format!("no connection to database `{database}`"),
                    })?;
                session.apply(migration, *action, &sql, &self.manifest.version.to_string())?;
                self.migrations
                    .push(format!("{database}:{}", migration.version));
                none(format!(
                    "{database} {} `{}` ({}, {})",
                    migration.version,
                    migration.description,
                    migration.tool,
                    action.describe()
                ))
            }
            Step::Start { .. } => {
                self.control().start()?;
                none("start command returned".into())
            }
            Step::Health { version, .. } => {
                self.control().wait_ready(version)?;
                none(format!(
                    "{} is healthy and reports {version}",
                    self.site.profile.service.name
                ))
            }
            Step::Healthy { version } => none(version.to_string()),
            Step::Commit { .. } => self.commit().map(|d| (d, None)),
        }
    }

    /// Copies `path` into the backup as `FOLDER/N-NAME` (docs/SITE.md,
    /// "Backup folders"), or records that it did not exist.
    fn backup_copy(
        &self,
        folder: &str,
        n: usize,
        path: &Path,
    ) -> Result<backup::FileRecord, StepError> {
        self.ensure_backup_dir()?;
        let rel = backup::file_rel(folder, n, path);
        backup::backup_file(&self.backup_dir, &rel, path, &self.precopies)
    }

    /// The stage step: the whole bundle read again, every chunk and file
    /// checked against the signed manifest, into the staging folder.
    fn stage(&mut self, files: usize, bytes: u64) -> Result<String, StepError> {
        let Some(source) = self.source.clone() else {
            return Err(StepError::Inconsistent {
                what: "the stage step needs the bundle file".into(),
            });
        };
        let bar = self.reporter.progress_bytes(bytes);
        bar.set_prefix("stage");
        let bar_handle = bar.clone();
        for path in self.staged_beside() {
            tree::remove_all(&path)?;
        }
        let mut trees = Vec::new();
        let mut routes = Vec::new();
        for step in &self.plan {
            match step {
                Step::Install {
                    file,
                    target,
                    staging: Staging::Beside,
                    ..
                } => routes.push((
                    self.entry(file)?.path.clone(),
                    tree::staged_beside(target, self.record.id),
                )),
                Step::InstallTree { tree: name, .. } => {
                    let root = self.tree_staged(step);
                    for (entry, rel) in self.manifest.tree_files(name) {
                        routes.push((entry.path.clone(), root.join(rel)));
                    }
                    let tree = self.manifest.tree(name).cloned().ok_or_else(|| {
                        StepError::Inconsistent {
                            what: format!("tree `{name}` is not in the signed manifest"),
                        }
                    })?;
                    trees.push((root, tree));
                }
                _ => {}
            }
        }
        let staged = StageSink::create(&self.stage_dir, Box::new(move |n| bar_handle.inc(n)))
            .and_then(|mut sink| {
                for (path, to) in routes {
                    sink.route(path, to);
                }
                read_and_verify(
                    self.site,
                    Some(&self.state),
                    &source.bundle,
                    source.opts,
                    Some(&mut sink),
                )
                .map_err(StepError::from)
            });
        bar.finish_and_clear();
        let verified = staged?;
        for (root, tree) in &trees {
            tree::finish_staged(root, tree)?;
        }
        self.record.bundle_sha256 = verified.bundle_sha256.to_hex();
        self.state
            .set_bundle_sha256(self.record.id, &self.record.bundle_sha256)?;
        Ok(format!(
            "{files} files, {}, every SHA-256 matched",
            airlock_formats::shown::bytes(bytes)
        ))
    }

    /// After `step` failed with `cause`: undoes what began, records the
    /// outcome and returns the error to report.
    fn fail(&mut self, step: &Step, cause: StepError) -> ApplyError {
        // Close the database before its backup is put back.
        self.session = None;
        if let Step::Commit { version } = step {
            // The new version runs and is healthy; only recording it failed.
            // Rolling a healthy node back for that would cost more than it saves.
            return ApplyError::NeedsOperator {
                version: version.to_string(),
                step: step.label().into(),
                reason: cause.to_string(),
                rollback: format!(
                    "not attempted: {version} runs and is healthy, but the state database still names {}; repair the state database before the next apply",
                    self.old
                ),
            };
        }
        let undo = self.undo.clone();
        let step = step.label().to_owned();
        if !self.node_changed {
            self.replay(&undo, None);
            return self.fail_with(Failure::Unchanged { step, cause });
        }
        let problems = self.replay(&undo, Some(format!("{step} failed: {cause}")));
        let failure = if problems.is_empty() {
            Failure::RolledBack { step, cause }
        } else {
            Failure::NeedsOperator {
                step,
                reason: cause.to_string(),
                rollback: problems.join("; "),
            }
        };
        self.fail_with(failure)
    }

    /// Replays `undo` newest first, each action journaled before it acts.
    /// With `reason` (the node changed) the rollback is announced and summed
    /// up. Returns what could not be undone.
    pub(crate) fn replay(&mut self, undo: &[Undo], reason: Option<String>) -> Vec<String> {
        let started = undo
            .iter()
            .find_map(|u| match u {
                Undo::StartOld { version } => Some(version.clone()),
                _ => None,
            })
            .unwrap_or_else(|| self.old.clone());
        let rollback_row = reason.as_ref().and_then(|reason| {
            self.state
                .journal_begin(
                    self.record.id,
                    &Entry::Rollback {
                        reason: reason.clone(),
                    },
                    None,
                )
                .ok()
        });
        if reason.is_some() {
            self.reporter.event(
                label::ROLLBACK,
                Status::Start,
                &format!("back to {started}"),
            );
        }
        let new_ran = undo.contains(&Undo::StopNew);
        let mut problems: Vec<String> = Vec::new();
        let mut service_down = false;
        let mut abandoned = false;
        for u in undo.iter().rev() {
            let skip = match u {
                Undo::RemoveStaging { .. } => false,
                Undo::RemovePreCopies { .. } => abandoned || !problems.is_empty(),
                Undo::StartOld { .. } => abandoned || !problems.is_empty(),
                _ => abandoned,
            };
            if skip {
                continue;
            }
            match self.undo_one(u, new_ran, service_down) {
                Ok(()) => service_down |= matches!(u, Undo::StopNew),
                // A leftover staging folder changes nothing on the node; its
                // failed event says which folder to delete.
                Err(_) if !u.changes_node() => {}
                Err(e) => match u {
                    Undo::StopNew => {
                        // Restoring files and databases under a running
                        // service could corrupt them: leave it all to the operator.
                        problems.push(StepError::NotStopped(Box::new(e)).to_string());
                        abandoned = true;
                    }
                    Undo::StartOld { version } => {
                        problems.push(format!("starting {version} again: {e}"));
                    }
                    _ => problems.push(e.to_string()),
                },
            }
        }
        if let Some(seq) = rollback_row {
            let (state, error) = if problems.is_empty() {
                (RowState::Done, None)
            } else {
                (RowState::Failed, Some(problems.join("; ")))
            };
            let _ = self
                .state
                .journal_end(self.record.id, seq, state, None, error.as_deref());
        }
        if reason.is_some() {
            if problems.is_empty() {
                self.reporter.event(
                    label::ROLLBACK,
                    Status::Ok,
                    &format!("the node runs {started} again, healthy"),
                );
            } else {
                self.reporter.event(
                    label::ROLLBACK,
                    Status::Failed,
                    &format!("incomplete: {}", problems.join("; ")),
                );
            }
        }
        problems
    }

    /// One undo action, journaled before it acts.
    fn undo_one(
        &mut self,
        undo: &Undo,
        new_ran: bool,
        service_down: bool,
    ) -> Result<(), StepError> {
        let entry = Entry::Undo { undo: undo.clone() };
        let seq = self.state.journal_begin(self.record.id, &entry, None)?;
        self.reporter.undo(undo, Status::Start, &undo.describe());
        failpoint!(undo.failpoint());
        let result = self.undo_act(undo, new_ran, service_down);
        let (state, error) = match &result {
            Ok(_) => (RowState::Done, None),
            Err(e) => (RowState::Failed, Some(e.to_string())),
        };
        let _ = self
            .state
            .journal_end(self.record.id, seq, state, None, error.as_deref());
        match result {
            Ok((status, detail)) => {
                self.reporter.undo(undo, status, &detail);
                Ok(())
            }
            Err(e) => {
                self.reporter.undo(undo, Status::Failed, &e.to_string());
                Err(e)
            }
        }
    }

    fn undo_act(
        &mut self,
        undo: &Undo,
        new_ran: bool,
        service_down: bool,
    ) -> Result<(Status, String), StepError> {
        let done = |detail: String| Ok((Status::Ok, detail));
        match undo {
            Undo::RemoveStaging { dir, beside } => {
                if fs_err::exists(dir)? {
                    fs_err::remove_dir_all(dir)?;
                }
                let mut removed = 0;
                for path in beside {
                    let mut partial = path.clone().into_os_string();
                    partial.push(".partial");
                    tree::remove_all(Path::new(&partial))?;
                    removed += usize::from(tree::remove_all(path)?);
                }
                done(if removed == 0 {
                    "removed".into()
                } else {
                    format!("removed, and {removed} staged beside their targets")
                })
            }
            Undo::RemovePreCopies { backup } => {
                if fs_err::exists(backup.join(backup::BACKUP_MANIFEST))? {
                    return done("kept: the backup is complete".into());
                }
                if fs_err::exists(backup)? {
                    fs_err::remove_dir_all(backup)?;
                }
                done("removed".into())
            }
            Undo::RestoreTree { install, backup } => {
                let kept = backup::load(backup)
                    .ok()
                    .and_then(|m| m.trees.into_iter().find(|t| t.name == install.name));
                done(tree::undo_install(
                    install,
                    kept.as_ref().map(|k| (backup.as_path(), k)),
                )?)
            }
            Undo::RestoreDatabases { backup, records } => {
                for record in records {
                    if record.existed {
                        backup::restore_database(backup, record)?;
                    } else {
                        backup::remove_database(&record.source)?;
                    }
                }
                done("restored from their backup copies".into())
            }
            Undo::StopNew => {
                self.control().stop()?;
                done("service is down".into())
            }
            Undo::RestoreDatabase { backup, record } => {
                backup::restore_database(backup, record)?;
                done("restored from its backup copy".into())
            }
            Undo::RemoveNewDatabase { path, .. } => {
                backup::remove_database(path)?;
                done("removed (it did not exist before)".into())
            }
            Undo::RestoreFile { backup, record } => {
                let temps = remove_temps_beside(&record.source)?;
                backup::restore_file(backup, record)?;
                done(format!("restored from its backup copy{}", leftovers(temps)))
            }
            Undo::RemoveNewFile { target } => {
                let temps = remove_temps_beside(target)?;
                backup::remove_new_file(target)?;
                done(format!(
                    "removed (it did not exist before){}",
                    leftovers(temps)
                ))
            }
            Undo::SettleRaft { backup, record } => self.settle_raft(backup, record, new_ran),
            Undo::StartOld { version } => {
                if !service_down {
                    // It may be half up: stop it first (it may be down already).
                    let _ = self.control().stop();
                }
                self.control().start_and_wait(version)?;
                done(format!("{version} is healthy"))
            }
        }
    }

    /// Decides what happens to the Raft data on rollback (docs/OPERATIONS.md,
    /// "The Raft safety rule"): unchanged since the backup, nothing to do;
    /// changed while the new version never ran, restored; changed because
    /// the member ran the new version, never restored (it may hold
    /// acknowledged entries its cluster relies on), and the old version
    /// starts on it only when the bundle declares that both versions run side
    /// by side.
    fn settle_raft(
        &self,
        backup: &Path,
        record: &backup::TreeRecord,
        new_ran: bool,
    ) -> Result<(Status, String), StepError> {
        let diff = backup::diff_tree(record)?;
        let folder = record.source.display();
        if diff.is_empty() {
            return Ok((
                Status::Ok,
                format!("`{folder}` is unchanged since the backup"),
            ));
        }
        if !new_ran {
            let n = backup::restore_tree(backup, record)?;
            return Ok((
                Status::Ok,
                format!("`{folder}` changed; {n} file(s) restored from the backup"),
            ));
        }
        let version = &self.manifest.version;
        if self.manifest.rolling_allowed {
            return Ok((
                Status::Info,
                format!(
                    "`{folder}` changed while {version} ran ({n} file(s)); kept as it is: restoring it could make the member forget acknowledged writes, and the bundle says {version} and the old version run side by side",
                    n = diff.len(),
                ),
            ));
        }
        Err(StepError::RaftChanged {
            folder: record.source.clone(),
            version: version.clone(),
            changed: diff.len(),
        })
    }
}

/// What an undo says about the temporary files an interrupted install left.
fn leftovers(removed: usize) -> String {
    if removed == 0 {
        String::new()
    } else {
        format!("; {removed} temporary file(s) of an interrupted install removed")
    }
}
