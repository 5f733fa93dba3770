//! `airlock-build`: the release engineer's command line.
//!
//! Exit codes: 0 success; 1 the command failed (bad spec, missing source, key
//! problem, I/O); 2 the command line is wrong; 3 `verify` found the bundle
//! invalid (signature, threshold, tampering), or `inspect` found it
//! malformed, short or missing a volume.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlock_builder::check;
use airlock_builder::keys::{keygen, load_secret_key, sign_bundle};
use airlock_builder::{build, BuildError, BuildOptions};
use anyhow::{anyhow, Context as _};
use clap::{CommandFactory as _, Parser, Subcommand};

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
        /// Write the bundle as volumes of at most SIZE bytes and an index
        /// instead of one file: `fat32` (4 GiB - 1 byte), or a number with
        /// K, M or G (powers of 1024), e.g. `700M`.
        #[arg(long, value_name = "SIZE", value_parser = parse_volume_size)]
        volume_size: Option<u64>,
        /// With --volume-size: add parity volumes, PERCENT of the volumes
        /// (rounded up), which rebuild as many damaged or missing ones.
        #[arg(long, value_name = "PERCENT", requires = "volume_size", value_parser = parse_parity)]
        parity: Option<u32>,
    },
    /// Cut a bundle file into volumes of at most SIZE bytes and an index,
    /// in a folder; the bundle file is not changed.
    Split {
        /// The bundle file.
        bundle: PathBuf,
        /// Largest volume: `fat32` (4 GiB - 1 byte), or a number with K, M
        /// or G (powers of 1024).
        #[arg(long, value_name = "SIZE", value_parser = parse_volume_size)]
        volume_size: u64,
        /// Add parity volumes, PERCENT of the volumes (rounded up).
        #[arg(long, value_name = "PERCENT", value_parser = parse_parity)]
        parity: Option<u32>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Join a volume set into one new bundle file (the volumes are only read).
    Join {
        /// The volume set: its index file or its folder.
        set: PathBuf,
        /// The new bundle file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Add one more signature to a bundle.
    Sign {
        /// The bundle file.
        bundle: PathBuf,
        /// The secret key that signs.
        #[arg(long)]
        key: PathBuf,
    },
    /// Print a bundle's manifest, signer key ids and SHA-256 without
    /// unpacking its payload.
    Inspect {
        /// The bundle file, or a volume set (its index or its folder).
        bundle: PathBuf,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Also write the exact manifest bytes as DIR/manifest.json and each
        /// signature as DIR/signature-KEYID.minisig, for `minisign -Vm
        /// manifest.json -x signature-KEYID.minisig -p KEY.pub`.
        #[arg(long, value_name = "DIR")]
        export: Option<PathBuf>,
    },
    /// Make and sign trust updates, which rotate the release keys a site
    /// trusts (`airlock-apply trust install`).
    Trust {
        #[command(subcommand)]
        action: TrustCommand,
    },
    /// Check a bundle completely: signatures, threshold, every chunk and file.
    Verify {
        /// The bundle file, or a volume set (its index or its folder).
        bundle: PathBuf,
        /// Trusted public keys (minisign .pub files).
        #[arg(long, required = true, num_args = 1..)]
        trust: Vec<PathBuf>,
        /// How many distinct trusted keys must have signed.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
    },
    /// Print a shell completion script for airlock-build on stdout, e.g.
    /// `airlock-build completions bash > /etc/bash_completion.d/airlock-build`
    /// (the Debian package installs them).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages, airlock-build.1 and one per command, into a
    /// folder (the Debian package installs them).
    #[command(hide = true)]
    Manpages {
        /// The folder, created if missing.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum TrustCommand {
    /// Write a new, unsigned trust update: the keys sites trust from this
    /// version on. Sign it with `trust sign`: by the threshold of the keys
    /// the sites trust now, and by the threshold of the new keys.
    New {
        /// Public keys to trust (minisign .pub files); repeat for each.
        #[arg(long = "key", required = true, num_args = 1..)]
        keys: Vec<PathBuf>,
        /// How many distinct keys must sign a bundle (and the next update).
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        /// The trust version, above the one the sites run (a site profile's
        /// [trust] is version 1).
        #[arg(long = "trust-version", value_name = "N")]
        version: u64,
        /// Sites refuse bundles this many days after the update was made,
        /// until a newer update is installed.
        #[arg(long, value_name = "DAYS")]
        expires_after_days: Option<u64>,
        /// The trust update file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Add a signature to a trust update.
    Sign {
        /// The trust update file.
        file: PathBuf,
        /// The secret key that signs.
        #[arg(long)]
        key: PathBuf,
    },
}

fn parse_volume_size(text: &str) -> Result<u64, String> {
    airlock_formats::volumes::parse_size(text)
}

fn parse_parity(text: &str) -> Result<u32, String> {
    let t = text.trim().trim_end_matches('%');
    t.parse::<u32>()
        .ok()
        .filter(|p| (1..=100).contains(p))
        .ok_or_else(|| format!("`{text}` is not a parity percentage: give 1 to 100, e.g. `10%`"))
}

/// Cuts `bundle` into a volume set in `out` and says what it wrote.
fn split_into(bundle: &Path, out: &Path, volume_size: u64, parity: u32) -> anyhow::Result<PathBuf> {
    let (index_path, index) = airlock_formats::volumes::split(bundle, out, volume_size, parity)?;
    eprintln!(
        "wrote {} volume(s) of at most {volume_size} bytes{} and the index {}",
        index.volumes.len(),
        match index.parity_count() {
            0 => String::new(),
            n => format!(" and {n} parity volume(s)"),
        },
        index_path.display()
    );
    eprintln!("sha256 {}  {}", index.sha256, index.bundle);
    Ok(index_path)
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

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
            volume_size,
            parity,
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
                eprintln!(
                    "sha256 {}  {}",
                    report.sha256,
                    report
                        .path
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                );
            }
            if let Some(size) = volume_size {
                // The one file was this command's own output: the volumes
                // replace it.
                let index = split_into(&report.path, &out, size, parity.unwrap_or(0))?;
                fs_err::remove_file(&report.path)?;
                if !json {
                    println!("{}", index.display());
                }
            } else if !json {
                println!("{}", report.path.display());
            }
        }
        Command::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut Program::command(), "airlock-build", &mut out);
        }
        Command::Manpages { out } => {
            fs_err::create_dir_all(&out)?;
            clap_mangen::generate_to(Program::command(), &out)
                .with_context(|| format!("writing manual pages into {}", out.display()))?;
        }
        Command::Split {
            bundle,
            volume_size,
            parity,
            out,
        } => {
            let index = split_into(&bundle, &out, volume_size, parity.unwrap_or(0))?;
            println!("{}", index.display());
        }
        Command::Join { set, out } => {
            let set = airlock_formats::VolumeSet::open(&set)?;
            set.join(&out)?;
            eprintln!(
                "joined {} volume(s) into {}; sha256 {}",
                set.index.volumes.len(),
                out.display(),
                set.index.sha256
            );
            println!("{}", out.display());
        }
        Command::Sign { bundle, key } => {
            let key = load_key(&key)?;
            let timestamp = source_date_epoch()?.unwrap_or_else(unix_now);
            let count = sign_bundle(&bundle, &key, timestamp)
                .with_context(|| format!("signing {}", bundle.display()))?;
            eprintln!(
                "signed {} with key {}; it now has {count} signature(s)",
                bundle.display(),
                key.key_id()
            );
        }
        Command::Trust { action } => match action {
            TrustCommand::New {
                keys,
                threshold,
                version,
                expires_after_days,
                out,
            } => {
                let created_at = source_date_epoch()?.unwrap_or_else(unix_now);
                let doc = airlock_builder::trust::new_update(
                    &keys,
                    threshold,
                    version,
                    created_at,
                    expires_after_days,
                    &out,
                )?;
                eprintln!(
                    "wrote trust update {} (version {}, {} of {} keys must sign{}); now sign it with `airlock-build trust sign {0} --key KEY` by the keys the sites trust now and by the new keys",
                    out.display(),
                    doc.version,
                    doc.threshold,
                    doc.keys.len(),
                    doc.expires_at
                        .map(|e| format!(", expires at {e} Unix seconds"))
                        .unwrap_or_default()
                );
            }
            TrustCommand::Sign { file, key } => {
                let key = load_key(&key)?;
                let timestamp = source_date_epoch()?.unwrap_or_else(unix_now);
                let (doc, count) = airlock_builder::trust::sign_update(&file, &key, timestamp)
                    .with_context(|| format!("signing {}", file.display()))?;
                eprintln!(
                    "signed trust update {} (version {}) with key {}; it now has {count} signature(s)",
                    file.display(),
                    doc.version,
                    key.key_id()
                );
            }
        },
        Command::Inspect {
            bundle,
            json,
            export,
        } => {
            let (header, sha256) = check::inspect(&bundle).map_err(|e| {
                let code = match &e {
                    BuildError::Bundle(airlock_formats::BundleError::Io { .. }) | BuildError::Io { .. } => {
                        EXIT_FAILED
                    }
                    _ => EXIT_INVALID,
                };
                Failure {
                    help: Some(match &e {
                        BuildError::Bundle(airlock_formats::BundleError::Incomplete { .. }) => {
                            "copy the bundle again and compare its SHA-256 with the one `airlock-build build` printed".into()
                        }
                        _ => "check the path; copy the bundle again if it is damaged".into(),
                    }),
                    code,
                    error: anyhow::Error::new(e).context(format!("inspecting {}", bundle.display())),
                }
            })?;
            if let Some(dir) = export {
                let written = check::export(&header, &dir)?;
                eprintln!(
                    "exported {} file(s) to {}: check them with `minisign -Vm {}/manifest.json -x {0}/signature-KEYID.minisig -p KEY.pub`",
                    written.len(),
                    dir.display(),
                    dir.display()
                );
            }
            if json {
                let inspection = check::Inspection::of(&header, &sha256)?;
                println!("{}", serde_json::to_string(&inspection)?);
            } else {
                print!("{}", check::render(&header));
                println!("sha256        {sha256}");
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
