//! `airlock-apply`: the site operator's command line.
//!
//! Exit codes (docs/OPERATIONS.md): 0 success; 1 failed before anything
//! changed (a missing site profile, a file `extract` does not find); 2 wrong
//! command line; 3 bundle refused by verification (or found damaged by
//! `check-media`, `inspect` or `extract`), nothing changed; 4 apply failed and was rolled back, the old version runs healthy;
//! 5 the node needs the operator (a rollback did not complete, or the new
//! version runs but could not be recorded); 6 another apply holds this node's
//! lock; 7 an interrupted apply must be resumed first; 8 `history --check` or
//! `backups verify` found damage.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use airlock_applier::cluster::{rolling, ClusterSite};
use airlock_applier::commands::resume::Resumed;
use airlock_applier::commands::rollback::RollbackPlan;
use airlock_applier::commands::{
    apply, backups, history, inspect, media, plan, resume, rollback, status, trust, verify,
};
use airlock_applier::protocol::{
    AppliedReport, BackupsReport, ErrorReport, HistoryCheckReport, HistoryEntry, HistoryReport,
    Message, PrunedReport, Status, PROTOCOL,
};
use airlock_applier::report::{eprint_line, print_line, Verbosity};
use airlock_applier::site::{is_cluster_profile, locate, ProfileFrom};
use airlock_applier::{exit, ApplyError, Interrupt, Reporter, Site, VerifyOptions};
use clap::{CommandFactory as _, Parser, Subcommand};

/// Verify and apply airlock bundles on a site with no network.
#[derive(Parser)]
#[command(name = "airlock-apply", version, about)]
struct Program {
    /// Print JSON on stdout, one object per line (docs/JSON.md): one per
    /// step for apply, resume and rollback, then the command's result, or
    /// the error; text for people stays on stderr.
    #[arg(long, global = true)]
    json: bool,
    /// Show times in UTC rather than in this machine's time zone.
    #[arg(long, global = true)]
    utc: bool,
    /// Show every event: each step's start and each file installed, backed
    /// up or restored.
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    verbose: bool,
    /// Show only failures and the error; the exit code tells the rest.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a bundle against this site: signatures, threshold, expiry,
    /// platform, version rules, every payload byte. Changes nothing on the
    /// node; the check is recorded in the audit log when a state database exists.
    Verify {
        /// The bundle file, or a volume set (its index or its folder).
        bundle: PathBuf,
        /// The site profile.
        /// Default: $AIRLOCK_SITE, else /etc/airlock/site.toml.
        #[arg(long, value_name = "PATH")]
        site: Option<PathBuf>,
        /// Accept the same or a lower version than the installed one, and an
        /// installed version outside the bundle's `upgrades_from`.
        #[arg(long)]
        allow_downgrade: bool,
        /// Accept a bundle past its expiry date; recorded in the audit log
        /// (docs/SITE.md, "Time and expiry").
        #[arg(long)]
        allow_expired: bool,
        /// Accept a bundle created more than `[trust] clock_skew_secs` ahead
        /// of this node's time, and move the node's time forward to it;
        /// recorded in the audit log.
        #[arg(long)]
        trust_bundle_time: bool,
    },
    /// Print what `apply` would do, step by step, with sizes and free space.
    /// Changes nothing.
    Plan {
        /// The bundle file, or a volume set (its index or its folder).
        bundle: PathBuf,
        /// The site profile.
        /// Default: $AIRLOCK_SITE, else /etc/airlock/site.toml.
        #[arg(long, value_name = "PATH")]
        site: Option<PathBuf>,
        /// As for `apply`.
        #[arg(long)]
        allow_downgrade: bool,
        /// As for `apply`.
        #[arg(long)]
        reinstall: bool,
        /// As for `apply`.
        #[arg(long)]
        allow_expired: bool,
        /// As for `apply`.
        #[arg(long)]
        trust_bundle_time: bool,
    },
    /// Apply a bundle to this node: verify, stage, stop, back up, install,
    /// migrate, start, check health; roll back by itself on failure. With
    /// `--mode rolling` and a cluster profile: a rolling upgrade of every node.
    Apply {
        /// The bundle file, or a volume set (its index or its folder).
        bundle: PathBuf,
        /// The site profile (a cluster profile with `--mode rolling`).
        /// Default: $AIRLOCK_SITE, else /etc/airlock/site.toml.
        #[arg(long, value_name = "PATH")]
        site: Option<PathBuf>,
        /// `single`: this node; `rolling`: the cluster, one node at a time.
        #[arg(long, value_enum, default_value_t = Mode::Single)]
        mode: Mode,
        /// Accept the same or a lower version than the installed one, and an
        /// installed version outside the bundle's `upgrades_from`.
        #[arg(long)]
        allow_downgrade: bool,
        /// Install the version that is installed already again (without it,
        /// applying the installed version does nothing and exits 0).
        #[arg(long)]
        reinstall: bool,
        /// Accept a bundle past its expiry date; recorded in the audit log
        /// (docs/SITE.md, "Time and expiry").
        #[arg(long)]
        allow_expired: bool,
        /// Accept a bundle created more than `[trust] clock_skew_secs` ahead
        /// of this node's time, and move the node's time forward to it;
        /// recorded in the audit log.
        #[arg(long)]
        trust_bundle_time: bool,
        /// Verify, stage and pre-copy, then wait for a line `go` on standard
        /// input before the service stops; anything else, or the end of the
        /// input, ends the apply there with the node unchanged (exit 1). A
        /// rolling upgrade's coordinator prepares the next node this way
        /// (docs/OPERATIONS.md, "Rolling upgrade").
        #[arg(long)]
        wait_for_go: bool,
    },
    /// Finish or undo an interrupted apply (killed, power cut): roll it back,
    /// or complete it when the new version was already healthy. With a cluster
    /// profile: continue the stopped rolling upgrade.
    Resume {
        /// The site profile.
        /// Default: $AIRLOCK_SITE, else /etc/airlock/site.toml.
        #[arg(long, value_name = "PATH")]
        site: Option<PathBuf>,
    },
    /// Return this node to the version before the last apply, from its backup.
    /// Database writes made since that apply are lost.
    Rollback {
        /// The site profile.
        /// Default: $AIRLOCK_SITE, else /etc/airlock/site.toml.
        #[arg(long, value_name = "PATH")]
        site: Option<PathBuf>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Show the installed version, the last applies and the backups.
    Status {
        /// The site profile.
        /// Default: $AIRLOCK_SITE, else /etc/airlock/site.toml.
        #[arg(long, value_name = "PATH")]
        site: Option<PathBuf>,
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
    /// Check a bundle copied from removable media, without a site profile:
    /// a volume set volume by volume (ok, bad, missing; whether parity can
    /// rebuild it), or a file whole; prints the bundle's SHA-256. Exit 3
    /// when something is damaged.
    CheckMedia {
        /// The bundle file, or a volume set (its index or its folder).
        bundle: PathBuf,
    },
    /// Rebuild a volume set's damaged or missing volumes from its parity
    /// volumes into a new folder, with the good ones and the index. The set
    /// itself is only read.
    Repair {
        /// The volume set: its index or its folder.
        set: PathBuf,
        /// The new folder for the complete set.
        #[arg(long)]
        out: PathBuf,
    },
    /// Show or change the release keys this site trusts: install a signed
    /// trust update, or list the keys in force and every version accepted.
    Trust {
        #[command(subcommand)]
        action: TrustAction,
    },
    /// Show the audit trail: every verify, apply, resume and rollback.
    History {
        /// The site profile.
        /// Default: $AIRLOCK_SITE, else /etc/airlock/site.toml.
        #[arg(long, value_name = "PATH")]
        site: Option<PathBuf>,
        /// Check the hash chain and exit 8 if an entry was changed or deleted.
        #[arg(long)]
        check: bool,
    },
    /// Show what a bundle holds without applying it: name, versions, times,
    /// sizes, signatures (checked against the site's trust when a site
    /// profile is found) and its SHA-256; with --files, every file. Changes
    /// nothing.
    Inspect {
        /// The bundle file, or a volume set (its index or its folder).
        bundle: PathBuf,
        /// List every file: role, mode, size, path in the bundle (what
        /// `extract` takes) and install path.
        #[arg(long)]
        files: bool,
        /// The site profile whose trust checks the signatures. Default:
        /// $AIRLOCK_SITE, else /etc/airlock/site.toml, when there is one.
        #[arg(long, value_name = "PATH")]
        site: Option<PathBuf>,
    },
    /// Write one file of a bundle (release notes, a config) to --out for
    /// reading, once the bundle's signatures meet the site's trust and the
    /// whole payload matched the signed manifest; on any failure nothing is
    /// written. Exit 3 when the bundle is refused.
    Extract {
        /// The bundle file, or a volume set (its index or its folder).
        bundle: PathBuf,
        /// The file's path in the bundle, as `inspect --files` lists it.
        path: String,
        /// Where to write it (replaced if it exists; mode 0644).
        #[arg(long)]
        out: PathBuf,
        /// The site profile whose trust checks the signatures.
        /// Default: $AIRLOCK_SITE, else /etc/airlock/site.toml.
        #[arg(long, value_name = "PATH")]
        site: Option<PathBuf>,
    },
    /// Print a shell completion script for airlock-apply on stdout, e.g.
    /// `airlock-apply completions bash > /etc/bash_completion.d/airlock-apply`
    /// (the Debian package installs them).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages, airlock-apply.1 and one per command, into a
    /// folder (the Debian package installs them).
    #[command(hide = true)]
    Manpages {
        /// The folder, created if missing.
        #[arg(long)]
        out: PathBuf,
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
enum TrustAction {
    /// Install a trust update made by `airlock-build trust new`: accepted
    /// only with a higher version, signed by the threshold of the keys
    /// trusted now and by the threshold of its own keys. Exit 3 otherwise.
    Install {
        /// The trust update file.
        file: PathBuf,
        /// The site profile, or a cluster profile (the coordinator's trust).
        /// Default: $AIRLOCK_SITE, else /etc/airlock/site.toml.
        #[arg(long, value_name = "PATH")]
        site: Option<PathBuf>,
    },
    /// The keys in force, their threshold and version, and every trust
    /// update accepted. Changes nothing.
    Show {
        /// The site profile, or a cluster profile.
        /// Default: $AIRLOCK_SITE, else /etc/airlock/site.toml.
        #[arg(long, value_name = "PATH")]
        site: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RolloutAction {
    /// Each node's version, state and step in the newest rolling upgrade.
    Status {
        /// The cluster profile.
        /// Default: $AIRLOCK_SITE, else /etc/airlock/site.toml.
        #[arg(long, value_name = "PATH")]
        site: Option<PathBuf>,
    },
    /// Give up a stopped rolling upgrade; every node stays as it is.
    Abandon {
        /// The cluster profile.
        /// Default: $AIRLOCK_SITE, else /etc/airlock/site.toml.
        #[arg(long, value_name = "PATH")]
        site: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BackupsAction {
    /// Each backup's versions, time, size and whether its hash list still matches.
    List {
        /// The site profile.
        /// Default: $AIRLOCK_SITE, else /etc/airlock/site.toml.
        #[arg(long, value_name = "PATH")]
        site: Option<PathBuf>,
    },
    /// Re-hash every copy; exit 8 if any backup is damaged or incomplete.
    Verify {
        /// The site profile.
        /// Default: $AIRLOCK_SITE, else /etc/airlock/site.toml.
        #[arg(long, value_name = "PATH")]
        site: Option<PathBuf>,
    },
    /// Remove old backups, keeping the newest `keep_backups` (or `--keep`).
    Prune {
        /// The site profile.
        /// Default: $AIRLOCK_SITE, else /etc/airlock/site.toml.
        #[arg(long, value_name = "PATH")]
        site: Option<PathBuf>,
        /// How many complete backups to keep.
        #[arg(long)]
        keep: Option<usize>,
    },
}

fn main() -> ExitCode {
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let program = match Program::try_parse() {
        Ok(program) => program,
        Err(e) => return usage_error(&e),
    };
    airlock_formats::time::set_utc(program.utc);
    let verbosity = if program.quiet {
        Verbosity::Quiet
    } else if program.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    let reporter = Reporter::with_verbosity(program.json, verbosity);
    match run(program.command, &reporter) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            reporter.error(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// A command line clap refused (exit 2), or `--help` and `--version`
/// (exit 0): clap's text on stderr (stdout for help), and with `--json` the
/// error as JSON on stdout too (docs/JSON.md, "Errors").
fn usage_error(e: &clap::Error) -> ExitCode {
    let code = u8::try_from(e.exit_code()).unwrap_or(exit::USAGE);
    let _ = e.print();
    if e.use_stderr() && std::env::args_os().any(|a| a == "--json") {
        let rendered = e.render().to_string();
        let first = rendered
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_owned();
        let report = ErrorReport {
            protocol: PROTOCOL,
            error: first,
            exit_code: code,
            help: Some("run `airlock-apply help` or `airlock-apply COMMAND --help`".into()),
        };
        print_line(&Message::Error(report).to_line());
    }
    ExitCode::from(code)
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

/// Asks the operator to confirm a rollback on the terminal.
fn confirm(plan: &RollbackPlan) -> bool {
    let a = &plan.apply;
    eprint_line(&format!(
        "roll back apply #{} ({} -> {}) to {} from `{}`?",
        a.id,
        a.from_version,
        a.to_version,
        a.from_version,
        plan.backup_dir.display()
    ));
    if !plan.databases.is_empty() {
        eprint_line(&format!(
            "database(s) {} go back to their state before that apply: writes made since then are lost.",
            plan.databases.join(", ")
        ));
    }
    if !std::io::stdin().is_terminal() {
        eprint_line("no terminal to confirm on: pass --yes");
        return false;
    }
    let _ = write!(std::io::stderr(), "type `yes` to go on: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    answer.trim() == "yes"
}

/// Prints `message` with `--json`, else `text` for a person on stdout.
fn output(reporter: &Reporter, message: Message, text: impl FnOnce() -> String) {
    if reporter.json() {
        reporter.message(&message);
    } else {
        print_line(text().trim_end());
    }
}

/// Loads a site profile for a command that only reads the node's state: a
/// trusted key that cannot be read is said on stderr, and the command goes
/// on (docs/SITE.md, "Where the profile is").
fn site_for_reading(flag: Option<PathBuf>) -> Result<(Site, Option<String>), ApplyError> {
    let (site, trust_error) = Site::load_for_reading(&locate(flag)?)?;
    let trust_error = trust_error.map(|e| e.to_string());
    if let Some(e) = &trust_error {
        eprint_line(&format!(
            "warning: {e}\n  this command only reads the node's state and goes on; verify and apply refuse every bundle until the trusted keys can be read"
        ));
    }
    Ok((site, trust_error))
}

fn run(command: Command, reporter: &Reporter) -> Result<u8, ApplyError> {
    match command {
        Command::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut Program::command(), "airlock-apply", &mut out);
        }
        Command::Manpages { out } => {
            fs_err::create_dir_all(&out).map_err(ApplyError::io("creating the manual's folder"))?;
            clap_mangen::generate_to(Program::command(), &out).map_err(ApplyError::io(format!(
                "writing manual pages into {}",
                out.display()
            )))?;
        }
        Command::CheckMedia { bundle } => {
            let report = media::check_media(&bundle, reporter)?;
            if reporter.json() {
                reporter.message(&Message::Media(report));
            }
        }
        Command::Repair { set, out } => {
            let report = media::repair(&set, &out, reporter)?;
            if reporter.json() {
                reporter.message(&Message::Repaired(report));
            }
        }
        Command::Inspect {
            bundle,
            files,
            site,
        } => {
            // The trust of a site profile when one is named or found; a
            // bundle can be inspected on a machine without one.
            let site = match site {
                Some(path) => Some(site_for_reading(Some(path))?.0),
                None => match locate(None).and_then(|path| site_for_reading(Some(path))) {
                    Ok((site, _)) => Some(site),
                    // No profile here (this may be the release engineer's
                    // machine), or a cluster profile: shown, not checked.
                    Err(ApplyError::SiteMissing { path, from }) => {
                        if from != ProfileFrom::Default {
                            eprint_line(&format!(
                                "warning: no site profile at `{}` ({}): the signatures are not checked against a site's trust",
                                path.display(),
                                from.describe()
                            ));
                        }
                        None
                    }
                    Err(ApplyError::ProfileKind { .. }) => None,
                    Err(e) => return Err(e),
                },
            };
            let inspection = inspect::inspect(&bundle, site.as_ref(), files)?;
            output(reporter, Message::Inspection(inspection.clone()), || {
                inspection.render()
            });
        }
        Command::Extract {
            bundle,
            path,
            out,
            site,
        } => {
            let site = Site::load(&locate(site)?)?;
            let extracted = inspect::extract(&site, &bundle, &path, &out)?;
            if reporter.json() {
                reporter.message(&Message::Extracted(extracted));
            } else {
                reporter.event(
                    "extract",
                    Status::Ok,
                    &format!(
                        "`{}` ({}, sha256 {}, signed by {}) written to {}",
                        extracted.path,
                        airlock_formats::shown::bytes(extracted.size),
                        extracted.sha256,
                        extracted.signers.join(","),
                        extracted.out
                    ),
                );
            }
        }
        Command::Verify {
            bundle,
            site,
            allow_downgrade,
            allow_expired,
            trust_bundle_time,
        } => {
            let site = Site::load(&locate(site)?)?;
            let opts = VerifyOptions {
                allow_downgrade,
                reinstall: false,
                allow_expired,
                trust_bundle_time,
            };
            let v = verify::verify(&site, &bundle, opts)?;
            if reporter.json() {
                reporter.message(&Message::Verified(verify::report(&v)));
            } else {
                reporter.event("verify", Status::Ok, &verify::summary(&v));
            }
        }
        Command::Plan {
            bundle,
            site,
            allow_downgrade,
            reinstall,
            allow_expired,
            trust_bundle_time,
        } => {
            let site = Site::load(&locate(site)?)?;
            let opts = VerifyOptions {
                allow_downgrade,
                reinstall,
                allow_expired,
                trust_bundle_time,
            };
            let plan = plan::plan(&site, &bundle, opts)?;
            let text = plan.render();
            output(reporter, Message::Plan(plan), || text);
        }
        Command::Apply {
            bundle,
            site,
            allow_downgrade,
            reinstall,
            allow_expired,
            trust_bundle_time,
            mode,
            wait_for_go,
        } => {
            let site = locate(site)?;
            if mode == Mode::Rolling {
                if allow_downgrade || reinstall || allow_expired || trust_bundle_time || wait_for_go
                {
                    return Err(ApplyError::Site {
                        path: site,
                        reason: "--allow-downgrade, --reinstall, --allow-expired, --trust-bundle-time and --wait-for-go are for one node at a time; a rolling upgrade does not pass them on: apply the bundle on each node's own site profile".into(),
                    });
                }
                let cluster = ClusterSite::load(&site)?;
                rolling::rollout(&cluster, Some(&bundle), reporter, &rollout_interrupt()?)?;
                return Ok(exit::OK);
            }
            if is_cluster_profile(&site)? {
                return Err(ApplyError::Site {
                    path: site,
                    reason: "this is a cluster profile: use `--mode rolling`, or the node's own site profile for one node".into(),
                });
            }
            let site = Site::load(&site)?;
            let opts = VerifyOptions {
                allow_downgrade,
                reinstall,
                allow_expired,
                trust_bundle_time,
            };
            let gate = wait_for_go.then(|| {
                Box::new(std::io::BufReader::new(std::io::stdin())) as Box<dyn std::io::BufRead>
            });
            let report = match apply::apply(&site, &bundle, opts, reporter, &interrupt()?, gate)? {
                apply::Applied::Installed(report) => report,
                apply::Applied::AlreadyInstalled { name, version } => {
                    reporter.event(
                        "done",
                        Status::Ok,
                        &format!("{name} {version} is already installed, nothing to do"),
                    );
                    return Ok(exit::OK);
                }
            };
            let elapsed = reporter.elapsed();
            reporter.event(
                "done",
                Status::Ok,
                &format!(
                    "{} -> {} in {:.1}s (service down {:.1}s); migrations: {}; backup: {}; log: {}",
                    report.from,
                    report.to,
                    elapsed.as_secs_f64(),
                    report.downtime.as_secs_f64(),
                    if report.migrations.is_empty() {
                        "none".into()
                    } else {
                        report.migrations.join(", ")
                    },
                    report.backup_dir.display(),
                    report.log.display()
                ),
            );
            if reporter.json() {
                let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                reporter.message(&Message::Applied(AppliedReport {
                    protocol: PROTOCOL,
                    from: report.from.to_string(),
                    to: report.to.to_string(),
                    elapsed_ms: ms(elapsed),
                    downtime_ms: ms(report.downtime),
                    migrations: report.migrations.clone(),
                    backup_dir: report.backup_dir.display().to_string(),
                    log: report.log.display().to_string(),
                }));
            }
        }
        Command::Resume { site } => {
            let site = locate(site)?;
            if is_cluster_profile(&site)? {
                let cluster = ClusterSite::load(&site)?;
                rolling::rollout(&cluster, None, reporter, &rollout_interrupt()?)?;
                return Ok(exit::OK);
            }
            let site = Site::load(&site)?;
            match resume::resume(&site, reporter, &interrupt()?)? {
                Resumed::Nothing => {}
                Resumed::Completed { id, version } => reporter.event(
                    "done",
                    Status::Ok,
                    &format!("apply #{id} completed: {version} is installed"),
                ),
                Resumed::RolledBack { id, version } => {
                    reporter.event(
                        "done",
                        Status::Ok,
                        &format!("apply #{id} rolled back: {version} runs"),
                    );
                    return Ok(exit::ROLLED_BACK);
                }
            }
        }
        Command::Rollback { site, yes } => {
            let site = Site::load(&locate(site)?)?;
            let version =
                rollback::rollback(&site, reporter, &interrupt()?, |plan| yes || confirm(plan))?;
            reporter.event("done", Status::Ok, &format!("rolled back: {version} runs"));
        }
        Command::Status { site } => {
            let (site, trust_error) = site_for_reading(site)?;
            let report = status::status(&site, trust_error)?;
            let text = report.render(&site.path, &site.profile.paths.backup_dir);
            output(reporter, Message::Status(report), || text);
        }
        Command::Rollout {
            action: RolloutAction::Abandon { site },
        } => {
            rolling::abandon(&ClusterSite::load(&locate(site)?)?, reporter)?;
        }
        Command::Rollout {
            action: RolloutAction::Status { site },
        } => {
            let cluster = ClusterSite::load(&locate(site)?)?;
            let report = rolling::status(&cluster)?;
            let text = report.render(&cluster.profile.paths.state_dir);
            output(reporter, Message::Rollout(report), || text);
        }
        Command::History { site, check } => {
            let (site, _) = site_for_reading(site)?;
            let none = format!(
                "no history yet: `{}` has no state database",
                site.profile.paths.state_dir.display()
            );
            if check {
                let entries = history::check(&site)?;
                output(
                    reporter,
                    Message::HistoryCheck(HistoryCheckReport {
                        protocol: PROTOCOL,
                        entries: entries.unwrap_or(0),
                        intact: true,
                    }),
                    || match entries {
                        Some(n) => {
                            format!("audit log intact: {n} entries, hash chain and head match")
                        }
                        None => none,
                    },
                );
            } else {
                let rows = history::history(&site)?;
                let text = rows
                    .as_deref()
                    .map_or_else(|| none.clone(), history::render);
                let entries = rows
                    .unwrap_or_default()
                    .into_iter()
                    .map(|row| HistoryEntry {
                        at_rfc3339: airlock_formats::time::rfc3339_signed(row.at),
                        row,
                    })
                    .collect();
                output(
                    reporter,
                    Message::History(HistoryReport {
                        protocol: PROTOCOL,
                        entries,
                    }),
                    || text,
                );
            }
        }
        Command::Backups { action } => backups_command(action, reporter)?,
        Command::Trust { action } => match action {
            TrustAction::Install { file, site } => {
                let done = trust::install(&locate(site)?, &file)?;
                if reporter.json() {
                    reporter.message(&Message::TrustInstalled(done));
                } else {
                    reporter.event(
                        "trust",
                        Status::Ok,
                        &format!(
                            "trust version {} installed (was {}): {} of {} must sign; signed by {} of the keys trusted before and {} of its own",
                            done.version,
                            done.previous,
                            done.threshold,
                            done.keys.join(", "),
                            done.current_signers.join(","),
                            done.new_signers.join(",")
                        ),
                    );
                }
            }
            TrustAction::Show { site } => {
                let shown = trust::show(&locate(site)?)?;
                let text = shown.render();
                output(reporter, Message::Trust(shown), || text);
            }
        },
    }
    Ok(exit::OK)
}

fn backups_command(action: BackupsAction, reporter: &Reporter) -> Result<(), ApplyError> {
    let verify = matches!(action, BackupsAction::Verify { .. });
    match action {
        BackupsAction::List { site } | BackupsAction::Verify { site } => {
            let (site, _) = site_for_reading(site)?;
            let rows = backups::list(&site)?;
            let text = backups::render(&rows, &site.profile.paths.backup_dir);
            let damaged = backups::damaged(&rows);
            output(
                reporter,
                Message::Backups(BackupsReport {
                    protocol: PROTOCOL,
                    backups: rows,
                }),
                || text,
            );
            match damaged {
                Some(e) if verify => Err(e),
                _ => Ok(()),
            }
        }
        BackupsAction::Prune { site, keep } => {
            let site = Site::load(&locate(site)?)?;
            let (keep, removed) = backups::prune(&site, keep)?;
            let mut text: String = removed
                .iter()
                .map(|dir| format!("removed {}\n", dir.display()))
                .collect();
            text.push_str(&format!(
                "kept the newest {keep} complete backup(s); removed {}",
                removed.len()
            ));
            output(
                reporter,
                Message::Pruned(PrunedReport {
                    protocol: PROTOCOL,
                    keep,
                    removed: removed.iter().map(|d| d.display().to_string()).collect(),
                }),
                || text,
            );
            Ok(())
        }
    }
}
