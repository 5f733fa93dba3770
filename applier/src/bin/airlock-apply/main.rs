//! `airlock-apply`: the site operator's command line.
//!
//! Exit codes (docs/OPERATIONS.md): 0 success; 1 failed before anything
//! changed; 2 wrong command line; 3 bundle refused by verification, nothing
//! changed; 4 apply failed and was rolled back, the old version runs healthy;
//! 5 the node needs the operator (a rollback did not complete, or the new
//! version runs but could not be recorded); 6 another apply holds this node's
//! lock; 7 an interrupted apply must be resumed first; 8 `history --check` or
//! `backups verify` found damage.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use airlock_applier::backup;
use airlock_applier::cluster::ClusterSite;
use airlock_applier::plan::plan;
use airlock_applier::recovery::{resume, rollback, Resumed, RollbackPlan};
use airlock_applier::rolling;
use airlock_applier::site::is_cluster_profile;
use airlock_applier::state::{AuditEntry, State};
use airlock_applier::verify::installed_version;
use airlock_applier::{
    apply, exit, read_and_verify, ApplyError, Interrupt, Reporter, Site, VerifyOptions,
};
use airlock_formats::DiscardSink;
use clap::{Parser, Subcommand};

/// Verify and apply airlock bundles on a site with no network.
#[derive(Parser)]
#[command(name = "airlock-apply", version, about)]
struct Program {
    /// Print machine-readable JSON on stdout: one object per step for
    /// apply, resume and rollback (human text stays on stderr).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a bundle against this site: signatures, threshold, expiry,
    /// platform, version rules, every payload byte. Changes nothing on the
    /// node; the check is recorded in the audit log when a state database exists.
    Verify {
        /// The bundle file.
        bundle: PathBuf,
        /// The site profile.
        #[arg(long)]
        site: PathBuf,
        /// Accept the same or a lower version than the installed one, and an
        /// installed version outside the bundle's `upgrades_from`.
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// Print what `apply` would do, step by step, with sizes and free space.
    /// Changes nothing.
    Plan {
        /// The bundle file.
        bundle: PathBuf,
        /// The site profile.
        #[arg(long)]
        site: PathBuf,
        /// As for `apply`.
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// Apply a bundle to this node: verify, stage, stop, back up, install,
    /// migrate, start, check health; roll back by itself on failure. With
    /// `--mode rolling` and a cluster profile: a rolling upgrade of every node.
    Apply {
        /// The bundle file.
        bundle: PathBuf,
        /// The site profile (a cluster profile with `--mode rolling`).
        #[arg(long)]
        site: PathBuf,
        /// `single`: this node; `rolling`: the cluster, one node at a time.
        #[arg(long, value_enum, default_value_t = Mode::Single)]
        mode: Mode,
        /// Accept the same or a lower version than the installed one, and an
        /// installed version outside the bundle's `upgrades_from`.
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// Finish or undo an interrupted apply (killed, power cut): roll it back,
    /// or complete it when the new version was already healthy. With a cluster
    /// profile: continue the stopped rolling upgrade.
    Resume {
        /// The site profile.
        #[arg(long)]
        site: PathBuf,
    },
    /// Return this node to the version before the last apply, from its backup.
    /// Database writes made since that apply are lost.
    Rollback {
        /// The site profile.
        #[arg(long)]
        site: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Show the installed version, the last applies and the backups.
    Status {
        /// The site profile.
        #[arg(long)]
        site: PathBuf,
    },
    /// The state of the newest rolling upgrade.
    Rollout {
        #[command(subcommand)]
        action: RolloutAction,
    },
    /// List, check or prune backups.
    Backups {
        #[command(subcommand)]
        action: BackupsAction,
    },
    /// Show the audit trail: every verify, apply, resume and rollback.
    History {
        /// The site profile.
        #[arg(long)]
        site: PathBuf,
        /// Check the hash chain and exit 8 if an entry was changed or deleted.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// This node.
    Single,
    /// Every node of a cluster, one at a time.
    Rolling,
}

#[derive(Subcommand)]
enum RolloutAction {
    /// Each node's version, state and step in the newest rolling upgrade.
    Status {
        /// The cluster profile.
        #[arg(long)]
        site: PathBuf,
    },
    /// Give up a stopped rolling upgrade; every node stays as it is.
    Abandon {
        /// The cluster profile.
        #[arg(long)]
        site: PathBuf,
    },
}

#[derive(Subcommand)]
enum BackupsAction {
    /// Each backup's versions, time, size and whether its hash list still matches.
    List {
        /// The site profile.
        #[arg(long)]
        site: PathBuf,
    },
    /// Re-hash every copy; exit 8 if any backup is damaged or incomplete.
    Verify {
        /// The site profile.
        #[arg(long)]
        site: PathBuf,
    },
    /// Remove old backups, keeping the newest `keep_backups` (or `--keep`).
    Prune {
        /// The site profile.
        #[arg(long)]
        site: PathBuf,
        /// How many complete backups to keep.
        #[arg(long)]
        keep: Option<usize>,
    },
}

fn main() -> ExitCode {
    let program = Program::parse();
    let json = program.json;
    match run(program) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(help) = e.help() {
                eprintln!("\nhelp: {help}");
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({"error": e.to_string(), "exit_code": e.exit_code()})
                );
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn interrupt() -> Result<Interrupt, ApplyError> {
    Interrupt::install("finishing the current step, then rolling back")
        .map_err(ApplyError::io("installing signal handlers"))
}

fn rollout_interrupt() -> Result<Interrupt, ApplyError> {
    Interrupt::install(
        "finishing the current node, then stopping the rollout (`resume` continues it)",
    )
    .map_err(ApplyError::io("installing signal handlers"))
}

fn confirm(plan: &RollbackPlan) -> bool {
    let a = &plan.apply;
    eprintln!(
        "roll back apply #{} ({} -> {}) to {} from `{}`?",
        a.id,
        a.from_version,
        a.to_version,
        a.from_version,
        plan.backup_dir.display()
    );
    if !plan.databases.is_empty() {
        eprintln!(
            "database(s) {} go back to their state before that apply: writes made since then are lost.",
            plan.databases.join(", ")
        );
    }
    if !std::io::stdin().is_terminal() {
        eprintln!("no terminal to confirm on: pass --yes");
        return false;
    }
    eprint!("type `yes` to go on: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    answer.trim() == "yes"
}

fn run(program: Program) -> Result<u8, ApplyError> {
    let reporter = Reporter::new(program.json);
    let json = program.json;
    match program.command {
        Command::Verify {
            bundle,
            site,
            allow_downgrade,
        } => {
            let site = Site::load(&site)?;
            let state = State::open_existing(&site.profile.paths.state_dir)?;
            let opts = VerifyOptions { allow_downgrade };
            let result =
                read_and_verify(&site, state.as_ref(), &bundle, opts, Some(&mut DiscardSink));
            if let Some(state) = &state {
                let (outcome, error, version, sha, signers) = match &result {
                    Ok(v) => (
                        "ok",
                        None,
                        Some(v.header.manifest.version.to_string()),
                        Some(v.bundle_sha256.to_hex()),
                        Some(v.signers_text()),
                    ),
                    Err(e @ ApplyError::Refused { .. }) => {
                        ("refused", Some(e.to_string()), None, None, None)
                    }
                    Err(e) => ("failed", Some(e.to_string()), None, None, None),
                };
                let _ = state.audit(&AuditEntry {
                    action: "verify".into(),
                    bundle: Some(bundle.display().to_string()),
                    version,
                    bundle_sha256: sha,
                    signers,
                    outcome: outcome.into(),
                    error,
                });
            }
            let v = result?;
            let m = &v.header.manifest;
            reporter.event(
                "verify",
                "ok",
                &format!(
                    "{} {} may be applied here: installed {} ({}), signed by {} (threshold {}), {} files, sha256 {}",
                    m.name,
                    m.version,
                    v.installed.version,
                    v.installed.source,
                    v.signers_text(),
                    site.trust.threshold(),
                    m.files.len(),
                    v.bundle_sha256
                ),
            );
        }
        Command::Plan {
            bundle,
            site,
            allow_downgrade,
        } => {
            let site = Site::load(&site)?;
            let plan = plan(&site, &bundle, VerifyOptions { allow_downgrade })?;
            if json {
                println!("{}", serde_json::to_string(&plan).unwrap_or_default());
            } else {
                print!("{}", plan.render());
            }
        }
        Command::Apply {
            bundle,
            site,
            allow_downgrade,
            mode,
        } => {
            if mode == Mode::Rolling {
                if allow_downgrade {
                    return Err(ApplyError::Preflight {
                        step: "rollout".into(),
                        reason: "--allow-downgrade is for one node at a time; a rolling downgrade is not supported".into(),
                    });
                }
                let cluster = ClusterSite::load(&site)?;
                rolling::rollout(&cluster, Some(&bundle), &reporter, &rollout_interrupt()?)?;
                return Ok(exit::OK);
            }
            if is_cluster_profile(&site)? {
                return Err(ApplyError::Site {
                    path: site,
                    reason: "this is a cluster profile: use `--mode rolling`, or the node's own site profile for one node".into(),
                });
            }
            let site = Site::load(&site)?;
            let interrupt = interrupt()?;
            let report = apply(
                &site,
                &bundle,
                VerifyOptions { allow_downgrade },
                &reporter,
                &interrupt,
            )?;
            reporter.event(
                "done",
                "ok",
                &format!(
                    "{} -> {} in {:.1}s (service down {:.1}s); migrations: {}; backup: {}",
                    report.from,
                    report.to,
                    reporter.elapsed().as_secs_f64(),
                    report.downtime.as_secs_f64(),
                    if report.migrations.is_empty() {
                        "none".into()
                    } else {
                        report.migrations.join(", ")
                    },
                    report.backup_dir.display()
                ),
            );
        }
        Command::Resume { site } => {
            if is_cluster_profile(&site)? {
                rolling::rollout(
                    &ClusterSite::load(&site)?,
                    None,
                    &reporter,
                    &rollout_interrupt()?,
                )?;
                return Ok(exit::OK);
            }
            let site = Site::load(&site)?;
            let interrupt = interrupt()?;
            match resume(&site, &reporter, &interrupt)? {
                Resumed::Nothing => {}
                Resumed::Completed { id, version } => {
                    reporter.event(
                        "done",
                        "ok",
                        &format!("apply #{id} completed: {version} is installed"),
                    );
                }
                Resumed::RolledBack { id, version } => {
                    reporter.event(
                        "done",
                        "ok",
                        &format!("apply #{id} rolled back: {version} runs"),
                    );
                    return Ok(exit::ROLLED_BACK);
                }
            }
        }
        Command::Rollback { site, yes } => {
            let site = Site::load(&site)?;
            let interrupt = interrupt()?;
            let version = rollback(&site, &reporter, &interrupt, |plan| yes || confirm(plan))?;
            reporter.event("done", "ok", &format!("rolled back: {version} runs"));
        }
        Command::Status { site } => status(&Site::load(&site)?, json)?,
        Command::Backups { action } => return backups(action, json),
        Command::Rollout {
            action: RolloutAction::Abandon { site },
        } => {
            let cluster = ClusterSite::load(&site)?;
            if rolling::abandon(&cluster, &reporter)?.is_none() {
                println!("no stopped rollout to abandon");
            }
        }
        Command::Rollout {
            action: RolloutAction::Status { site },
        } => {
            let cluster = ClusterSite::load(&site)?;
            match rolling::status(&cluster)? {
                None if json => println!("{}", serde_json::json!({"rollout": null, "nodes": []})),
                None => println!(
                    "no rolling upgrade recorded in `{}`",
                    cluster.profile.paths.state_dir.display()
                ),
                Some((r, nodes)) if json => {
                    println!("{}", serde_json::json!({"rollout": r, "nodes": nodes}));
                }
                Some((r, _)) => {
                    println!(
                        "rollout #{} of {} {}: {}{}",
                        r.id,
                        r.name,
                        r.version,
                        r.outcome,
                        r.error
                            .as_deref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    );
                    let state = State::open(&cluster.profile.paths.state_dir)?;
                    print!("{}", rolling::render_table(&state, r.id)?);
                }
            }
        }
        Command::History { site, check } => {
            let site = Site::load(&site)?;
            let Some(state) = State::open_existing(&site.profile.paths.state_dir)? else {
                println!(
                    "no history yet: `{}` has no state database",
                    site.profile.paths.state_dir.display()
                );
                return Ok(exit::OK);
            };
            if check {
                return match state.check_history()? {
                    Ok(n) => {
                        println!("audit log intact: {n} entries, hash chain and head match");
                        Ok(exit::OK)
                    }
                    Err(problems) => Err(ApplyError::CheckFailed(format!(
                        "the audit log was tampered with: {}",
                        problems.join("; ")
                    ))),
                };
            }
            let rows = state.history()?;
            if json {
                println!("{}", serde_json::to_string(&rows).unwrap_or_default());
            } else {
                for r in rows {
                    println!(
                        "#{:<4} {} {:<10} {:<8} {:<14} {} {} sha256 {} signers {}{}",
                        r.id,
                        r.at,
                        r.user,
                        r.action,
                        r.outcome,
                        r.bundle.as_deref().unwrap_or("-"),
                        r.version.as_deref().unwrap_or("-"),
                        r.bundle_sha256
                            .as_deref()
                            .filter(|s| !s.is_empty())
                            .map_or("-", |s| &s[..s.len().min(16)]),
                        r.signers
                            .as_deref()
                            .filter(|s| !s.is_empty())
                            .unwrap_or("-"),
                        r.error.map(|e| format!("\n       {e}")).unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(exit::OK)
}

fn status(site: &Site, json: bool) -> Result<(), ApplyError> {
    let state = State::open_existing(&site.profile.paths.state_dir)?;
    let installed = installed_version(site, state.as_ref());
    let applies = match &state {
        Some(s) => s.recent_applies(5)?,
        None => Vec::new(),
    };
    let interrupted = applies
        .iter()
        .find(|a| a.outcome == "running")
        .map(|a| a.id);
    let backups = backup::list(&site.profile.paths.backup_dir);
    if json {
        let value = serde_json::json!({
            "installed": installed.as_ref().ok().map(|i| serde_json::json!({"version": i.version.to_string(), "source": i.source})),
            "interrupted_apply": interrupted,
            "applies": applies.iter().map(|a| serde_json::json!({
                "id": a.id, "bundle": a.bundle, "from": a.from_version, "to": a.to_version,
                "started_at": a.started_at, "finished_at": a.finished_at, "outcome": a.outcome,
                "backup_dir": a.backup_dir, "error": a.error,
            })).collect::<Vec<_>>(),
            "backups": backups.iter().map(|b| serde_json::json!({
                "dir": b.dir, "complete": b.manifest.is_some(), "size": b.size,
                "from": b.manifest.as_ref().map(|m| m.from_version.clone()),
                "to": b.manifest.as_ref().map(|m| m.to_version.clone()),
            })).collect::<Vec<_>>(),
        });
        println!("{value}");
        return Ok(());
    }
    match &installed {
        Ok(i) => println!("installed   {} (from the {})", i.version, i.source),
        Err(e) => println!("installed   unknown: {e}"),
    }
    if let Some(id) = interrupted {
        println!(
            "INTERRUPTED apply #{id}: run `airlock-apply resume --site {}`",
            site.path.display()
        );
    }
    println!("last applies:");
    if applies.is_empty() {
        println!("  none");
    }
    for a in &applies {
        println!(
            "  #{} {} -> {} {} at {} ({})",
            a.id, a.from_version, a.to_version, a.outcome, a.started_at, a.bundle
        );
        if let Some(e) = &a.error {
            println!("      {e}");
        }
    }
    println!("backups in {}:", site.profile.paths.backup_dir.display());
    if backups.is_empty() {
        println!("  none");
    }
    for b in &backups {
        let what = b.manifest.as_ref().map_or_else(
            || "incomplete".to_string(),
            |m| format!("{} -> {}", m.from_version, m.to_version),
        );
        println!("  {}  {}  {} MiB", b.dir.display(), what, b.size >> 20);
    }
    Ok(())
}

fn backups(action: BackupsAction, json: bool) -> Result<u8, ApplyError> {
    let verify_only = matches!(action, BackupsAction::Verify { .. });
    match action {
        BackupsAction::List { site } | BackupsAction::Verify { site } => {
            let site = Site::load(&site)?;
            let mut damaged = Vec::new();
            let mut rows = Vec::new();
            for b in backup::list(&site.profile.paths.backup_dir) {
                let problems = match &b.manifest {
                    Some(m) => backup::verify(&b.dir, m),
                    None => vec![
                        "incomplete: no backup.json (the apply stopped while backing up)".into(),
                    ],
                };
                if !problems.is_empty() {
                    damaged.push(format!("`{}`: {}", b.dir.display(), problems.join("; ")));
                }
                rows.push(serde_json::json!({
                    "dir": b.dir,
                    "from": b.manifest.as_ref().map(|m| m.from_version.clone()),
                    "to": b.manifest.as_ref().map(|m| m.to_version.clone()),
                    "created_at": b.manifest.as_ref().map(|m| m.created_at),
                    "size": b.size,
                    "intact": problems.is_empty(),
                    "problems": problems,
                }));
            }
            if json {
                println!("{}", serde_json::Value::Array(rows));
            } else if rows.is_empty() {
                println!(
                    "no backups in `{}`",
                    site.profile.paths.backup_dir.display()
                );
            } else {
                for r in &rows {
                    println!(
                        "{}  {} -> {}  at {}  {} MiB  {}",
                        r["dir"].as_str().unwrap_or_default(),
                        r["from"].as_str().unwrap_or("?"),
                        r["to"].as_str().unwrap_or("?"),
                        r["created_at"]
                            .as_i64()
                            .map_or_else(|| "?".into(), |t| t.to_string()),
                        r["size"].as_u64().unwrap_or(0) >> 20,
                        if r["intact"].as_bool().unwrap_or(false) {
                            "hashes match"
                        } else {
                            "DAMAGED"
                        }
                    );
                }
            }
            if verify_only && !damaged.is_empty() {
                return Err(ApplyError::CheckFailed(format!(
                    "damaged backups: {}",
                    damaged.join("; ")
                )));
            }
        }
        BackupsAction::Prune { site, keep } => {
            let site = Site::load(&site)?;
            let _lock = airlock_applier::lock::lock(&site)?;
            let mut protect = Vec::new();
            if let Some(state) = State::open_existing(&site.profile.paths.state_dir)? {
                // An interrupted apply may still need its backup.
                airlock_applier::apply::refuse_if_interrupted(&state)?;
                // So does `rollback`: the backup of the last completed apply stays.
                if let Some(dir) = state
                    .recent_applies(1000)?
                    .into_iter()
                    .find(|a| a.outcome == "ok" && !a.bundle.starts_with("rollback of"))
                    .and_then(|a| a.backup_dir)
                {
                    protect.push(PathBuf::from(dir));
                }
            }
            let keep = keep.unwrap_or(site.profile.paths.keep_backups).max(1);
            let protected: Vec<&std::path::Path> = protect.iter().map(PathBuf::as_path).collect();
            let removed =
                backup::prune(&site.profile.paths.backup_dir, keep, &protected).map_err(|e| {
                    ApplyError::Preflight {
                        step: "prune".into(),
                        reason: e,
                    }
                })?;
            for dir in &removed {
                println!("removed {}", dir.display());
            }
            println!(
                "kept the newest {keep} complete backup(s); removed {}",
                removed.len()
            );
        }
    }
    Ok(exit::OK)
}
