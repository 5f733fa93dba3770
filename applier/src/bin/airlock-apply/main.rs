//! `airlock-apply`: the site operator's command line.
//!
//! Exit codes (docs/OPERATIONS.md): 0 success; 1 failed before anything
//! changed; 2 wrong command line; 3 bundle refused by verification, nothing
//! changed; 4 apply failed and was rolled back, the old version runs healthy;
//! 5 apply failed and the rollback did not complete, the operator must act;
//! 6 another apply holds this node's lock.

use std::path::PathBuf;
use std::process::ExitCode;

use airlock_applier::backup;
use airlock_applier::state::{AuditEntry, State};
use airlock_applier::verify::installed_version;
use airlock_applier::{apply, exit, read_and_verify, ApplyError, Reporter, Site, VerifyOptions};
use airlock_formats::DiscardSink;
use clap::{Parser, Subcommand};

/// Verify and apply airlock bundles on a site with no network.
#[derive(Parser)]
#[command(name = "airlock-apply", version, about)]
struct Program {
    /// Print machine-readable JSON lines on stdout (human text stays on stderr).
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
    /// Apply a bundle to this node: verify, stage, stop, back up, install,
    /// migrate, start, check health; roll back by itself on failure.
    Apply {
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
    /// Show the installed version, the last applies and the backups.
    Status {
        /// The site profile.
        #[arg(long)]
        site: PathBuf,
    },
}

fn main() -> ExitCode {
    let program = Program::parse();
    let json = program.json;
    match run(program) {
        Ok(()) => ExitCode::from(exit::OK),
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

fn run(program: Program) -> Result<(), ApplyError> {
    let reporter = Reporter::new(program.json);
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
                    Err(e) => ("refused", Some(e.to_string()), None, None, None),
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
        Command::Apply {
            bundle,
            site,
            allow_downgrade,
        } => {
            let site = Site::load(&site)?;
            let report = apply(&site, &bundle, VerifyOptions { allow_downgrade }, &reporter)?;
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
        Command::Status { site } => {
            let site = Site::load(&site)?;
            let state = State::open_existing(&site.profile.paths.state_dir)?;
            let installed = installed_version(&site, state.as_ref());
            let applies = match &state {
                Some(s) => s.recent_applies(5)?,
                None => Vec::new(),
            };
            let backups = backup::list(&site.profile.paths.backup_dir);
            if program.json {
                let value = serde_json::json!({
                    "installed": installed.as_ref().ok().map(|i| serde_json::json!({"version": i.version.to_string(), "source": i.source})),
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
            } else {
                match &installed {
                    Ok(i) => println!("installed   {} (from the {})", i.version, i.source),
                    Err(e) => println!("installed   unknown: {e}"),
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
            }
        }
    }
    Ok(())
}
