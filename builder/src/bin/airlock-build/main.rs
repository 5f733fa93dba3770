//! `airlock-build`: the release engineer's command line.
//!
//! Exit codes: 0 success; 1 the command failed (bad spec, missing source, key
//! problem, I/O); 2 the command line is wrong; 3 `verify` found the bundle
//! invalid (signature, threshold, tampering).

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlock_builder::check;
use airlock_builder::keys::{keygen, load_secret_key, sign_bundle};
use airlock_builder::{build, BuildError, BuildOptions};
use anyhow::{anyhow, Context as _};
use clap::{Parser, Subcommand};

/// Build, sign and check airlock bundles.
#[derive(Parser)]
#[command(name = "airlock-build", version, about)]
struct Program {
    /// Never draw progress bars.
    #[arg(long, global = true)]
    no_progress: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a release key pair: PATH.key (secret, mode 0600) and PATH.pub.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
        /// Do not protect the secret key with a passphrase.
        #[arg(long)]
        unencrypted: bool,
    },
    /// Build and sign DIR/NAME-VERSION.airlock from a bundle spec.
    Build {
        /// The bundle spec (bundle.toml).
        #[arg(long)]
        spec: PathBuf,
        /// The secret key that signs the bundle.
        #[arg(long)]
        key: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// zstd compression level (1-22).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=22))]
        level: i32,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Add one more signature to a bundle.
    Sign {
        /// The bundle file.
        bundle: PathBuf,
        /// The secret key that signs.
        #[arg(long)]
        key: PathBuf,
    },
    /// Print a bundle's manifest and signer key ids without reading its payload.
    Inspect {
        /// The bundle file.
        bundle: PathBuf,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Check a bundle completely: signatures, threshold, every chunk and file.
    Verify {
        /// The bundle file.
        bundle: PathBuf,
        /// Trusted public keys (minisign .pub files).
        #[arg(long, required = true, num_args = 1..)]
        trust: Vec<PathBuf>,
        /// How many distinct trusted keys must have signed.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
    },
}

const EXIT_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 3;

fn main() -> ExitCode {
    let program = Program::parse();
    match run(program) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", report(&failure.error));
            if let Some(help) = failure.help {
                eprintln!("\nhelp: {help}");
            }
            ExitCode::from(failure.code)
        }
    }
}

/// The error and its causes as one line; a cause that the message before it
/// already ends with (our errors print their source) is not repeated.
fn report(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

struct Failure {
    error: anyhow::Error,
    help: Option<String>,
    code: u8,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error = e.into();
        let help = help_for(&error);
        Self {
            error,
            help,
            code: EXIT_FAILED,
        }
    }
}

fn help_for(error: &anyhow::Error) -> Option<String> {
    match error.downcast_ref::<BuildError>()? {
        BuildError::Source { .. } => Some("check the source paths in the spec; they are relative to the spec's folder".into()),
        BuildError::Migration { .. } => {
            Some("name migrations as the service's tool does: VERSION_NAME/up.sql (diesel), VERSION_DESCRIPTION.sql (sqlx), VERSION_TITLE.up.sql (golang-migrate), one version each; docs/FORMAT.md, \"Migration tools\"".into())
        }
        BuildError::Key { .. } => Some("check the key file and passphrase (AIRLOCK_PASSPHRASE)".into()),
        BuildError::AlreadySigned { .. } => Some("each key signs once; a second signature must come from another release key".into()),
        _ => None,
    }
}

fn passphrase_for(what: &str, confirm: bool) -> Result<String, String> {
    if let Ok(p) = std::env::var("AIRLOCK_PASSPHRASE") {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err("needs a passphrase: set AIRLOCK_PASSPHRASE or run on a terminal".into());
    }
    let first = rpassword::prompt_password(format!("passphrase for {what}: "))
        .map_err(|e| e.to_string())?;
    if confirm {
        let again = rpassword::prompt_password("passphrase again: ").map_err(|e| e.to_string())?;
        if again != first {
            return Err("the two passphrases differ".into());
        }
    }
    Ok(first)
}

fn source_date_epoch() -> anyhow::Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => Ok(Some(s.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH `{s}` is not a number of seconds")
        })?)),
        Err(_) => Ok(None),
    }
}

fn load_key(path: &Path) -> Result<airlock_formats::SecretKey, BuildError> {
    load_secret_key(path, || passphrase_for(&path.display().to_string(), false))
}

fn run(program: Program) -> Result<(), Failure> {
    let progress = !program.no_progress && std::io::stderr().is_terminal();
    match program.command {
        Command::Keygen { out, unencrypted } => {
            let passphrase = if unencrypted {
                None
            } else {
                Some(passphrase_for("the new key", true).map_err(|e| anyhow!("keygen {e}"))?)
            };
            let (key_id, secret, public) = keygen(&out, passphrase)?;
            eprintln!("wrote {} and {}", secret.display(), public.display());
            println!("{key_id}");
        }
        Command::Build {
            spec,
            key,
            out,
            level,
            json,
        } => {
            let key = load_key(&key)?;
            let started = std::time::Instant::now();
            let report = build(&BuildOptions {
                spec: &spec,
                key: &key,
                out_dir: &out,
                level,
                source_date_epoch: source_date_epoch()?,
                progress,
            })?;
            let m = &report.manifest;
            if json {
                let summary =
                    report.summary(key.key_id().to_string(), started.elapsed().as_secs_f64());
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                for folder in &report.migrations {
                    eprintln!("{}", folder.line());
                }
                eprintln!(
                    "built {} ({} files, {} bytes unpacked, {} bytes bundle) in {:.1}s, signed by {}",
                    report.path.display(),
                    m.files.len(),
                    m.payload.unpacked_size,
                    report.size,
                    started.elapsed().as_secs_f64(),
                    key.key_id()
                );
                println!("{}", report.path.display());
            }
        }
        Command::Sign { bundle, key } => {
            let key = load_key(&key)?;
            let timestamp = source_date_epoch()?.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            });
            let count = sign_bundle(&bundle, &key, timestamp)
                .with_context(|| format!("signing {}", bundle.display()))?;
            eprintln!(
                "signed {} with key {}; it now has {count} signature(s)",
                bundle.display(),
                key.key_id()
            );
        }
        Command::Inspect { bundle, json } => {
            let header = check::inspect(&bundle)?;
            if json {
                let inspection = check::Inspection::of(&header)?;
                println!("{}", serde_json::to_string(&inspection)?);
            } else {
                print!("{}", check::render(&header));
            }
        }
        Command::Verify {
            bundle,
            trust,
            threshold,
        } => match check::verify(&bundle, &trust, threshold) {
            Ok(verified) => println!("{}", verified.summary()),
            Err(e) => {
                return Err(Failure {
                    help: e.help().map(str::to_owned),
                    code: if e.unreadable() || matches!(e, check::VerifyFailure::Keys(_)) {
                        EXIT_FAILED
                    } else {
                        EXIT_INVALID
                    },
                    error: anyhow::Error::new(e),
                });
            }
        },
    }
    Ok(())
}
