//! `airlock-build`: the release engineer's command line.
//!
//! Exit codes: 0 success; 1 the command failed (bad spec, missing source, key
//! problem, I/O, an I/O error while `verify` reads the bundle); 2 the command
//! line is wrong; 3 `verify` found the bundle invalid (unsigned, signature,
//! threshold, tampering), or `inspect` found it malformed, short or missing
//! a volume.
//!
//! With `--json`, stdout carries one JSON object a line, each with a
//! `"type"` (docs/JSON.md, "airlock-build"), and a failure ends it with an
//! `{"type":"error",...}` line; text for people stays on stderr.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlock_builder::check;
use airlock_builder::keys::{keygen, load_secret_key, sign_bundle};
use airlock_builder::{build, prepare, BuildError, BuildOptions};
use airlock_formats::time::rfc3339;
use anyhow::{anyhow, Context as _};
use clap::{CommandFactory as _, Parser, Subcommand};

mod json;

use json::Output;

/// Build, sign and check airlock bundles.
#[derive(Parser)]
#[command(name = "airlock-build", version, about)]
struct Program {
    /// Never draw progress bars.
    #[arg(long, global = true)]
    no_progress: bool,
    /// Print the results on stdout as JSON, one object a line with a
    /// "type" (docs/JSON.md); text for people goes to stderr.
    #[arg(long, global = true)]
    json: bool,
    /// Show times in UTC rather than the local time zone.
    #[arg(long, global = true)]
    utc: bool,
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
    #[command(group(clap::ArgGroup::new("signing").required(true).args(["key", "unsigned"])))]
    Build {
        /// The bundle spec (bundle.toml).
        #[arg(long)]
        spec: PathBuf,
        /// The secret key that signs the bundle.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Write the bundle with no signature, to be signed with `sign`
        /// elsewhere (e.g. on an offline machine holding the key).
        #[arg(long)]
        unsigned: bool,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// zstd compression level (1-22).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=22))]
        level: i32,
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
    /// Add one more signature to a bundle, in place or into a new file.
    Sign {
        /// The bundle file (with --out, also a volume set).
        bundle: PathBuf,
        /// The secret key that signs.
        #[arg(long)]
        key: PathBuf,
        /// Write the signed bundle to this new file and leave BUNDLE as it
        /// is (e.g. on read-only media); without it, BUNDLE is replaced.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print a bundle's manifest, signer key ids and SHA-256 without
    /// unpacking its payload.
    Inspect {
        /// The bundle file, or a volume set (its index or its folder).
        bundle: PathBuf,
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
    /// Add a signature to a trust update, in place or into a new file.
    Sign {
        /// The trust update file.
        file: PathBuf,
        /// The secret key that signs.
        #[arg(long)]
        key: PathBuf,
        /// Write the signed update to this file and leave FILE as it is;
        /// without it, FILE is replaced.
        #[arg(long, value_name = "OUT")]
        out: Option<PathBuf>,
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
fn split_into(
    bundle: &Path,
    out: &Path,
    volume_size: u64,
    parity: u32,
) -> anyhow::Result<json::Split> {
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
    Ok(json::Split {
        index: index_path,
        bundle: index.bundle.clone(),
        sha256: index.sha256.to_hex(),
        size: index.size,
        volumes: index.volumes.len(),
        parity_volumes: index.parity_count(),
        volume_size,
    })
}

const EXIT_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 3;

fn main() -> ExitCode {
    let program = match Program::try_parse() {
        Ok(program) => program,
        Err(e) => {
            // clap's text on stderr (help and version on stdout, exit 0);
            // with --json anywhere on the line, the error line too.
            let code = u8::try_from(e.exit_code()).unwrap_or(2);
            let _ = e.print();
            if e.use_stderr() && std::env::args_os().any(|a| a == "--json") {
                let rendered = e.render().to_string();
                let first = rendered.lines().next().unwrap_or_default();
                Output::new(true).error(
                    first.trim_start_matches("error: "),
                    Some("run `airlock-build help` or `airlock-build COMMAND --help`"),
                    code,
                );
            }
            return ExitCode::from(code);
        }
    };
    airlock_formats::time::set_utc(program.utc);
    let output = Output::new(program.json);
    match run(program, &output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let error = report(&failure.error);
            eprintln!("error: {error}");
            if let Some(help) = &failure.help {
                eprintln!("\nhelp: {help}");
            }
            output.error(&error, failure.help.as_deref(), failure.code);
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

fn run(program: Program, output: &Output) -> Result<(), Failure> {
    let progress = !program.no_progress && std::io::stderr().is_terminal();
    match program.command {
        Command::Keygen { out, unencrypted } => {
            let passphrase = if unencrypted {
                None
            } else {
                let p = passphrase_for("the new key", true).map_err(|e| anyhow!("keygen {e}"))?;
                if p.is_empty() {
                    // As `minisign -G` does, an empty passphrase is taken
                    // (the key is encrypted with it), but it protects nothing.
                    eprintln!(
                        "warning: the passphrase is empty, so the secret key is not protected: anyone who copies {} can sign; to mean that, use --unencrypted",
                        airlock_builder::keys::key_paths(&out).0.display()
                    );
                }
                Some(p)
            };
            let encrypted = passphrase.is_some();
            let (key_id, secret, public) = keygen(&out, passphrase)?;
            eprintln!("wrote {} and {}", secret.display(), public.display());
            output.result(
                "key",
                &json::Key {
                    key_id: key_id.to_string(),
                    secret_key: secret,
                    public_key: public,
                    encrypted,
                },
                || Some(key_id.to_string()),
            )?;
        }
        Command::Build {
            spec,
            key,
            unsigned,
            out,
            level,
            volume_size,
            parity,
        } => {
            // Everything that can fail without the key first: a mistake in
            // the spec costs no passphrase.
            let started = std::time::Instant::now();
            let prepared = prepare(&spec)?;
            let key = match (&key, unsigned) {
                (Some(path), false) => Some(load_key(path)?),
                _ => None,
            };
            let report = build(
                prepared,
                &BuildOptions {
                    key: key.as_ref(),
                    out_dir: &out,
                    level,
                    source_date_epoch: source_date_epoch()?,
                    progress,
                },
            )?;
            let m = &report.manifest;
            let key_id = key.as_ref().map(|k| k.key_id().to_string());
            for folder in &report.migrations {
                eprintln!("{}", folder.line());
            }
            eprintln!(
                "built {} ({} files, {} bytes unpacked, {} bytes bundle) in {:.1}s, {}",
                report.path.display(),
                m.files.len(),
                m.payload.unpacked_size,
                report.size,
                started.elapsed().as_secs_f64(),
                key_id.as_ref().map_or_else(
                    || "unsigned: sign it with `airlock-build sign` before use".to_owned(),
                    |id| format!("signed by {id}")
                )
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
            let summary = report.summary(key_id, started.elapsed().as_secs_f64());
            match volume_size {
                None => output.result("built", &summary, || {
                    Some(report.path.display().to_string())
                })?,
                Some(size) => {
                    output.result("built", &summary, || None)?;
                    // The one file was this command's own output: the
                    // volumes replace it.
                    let split = split_into(&report.path, &out, size, parity.unwrap_or(0))?;
                    fs_err::remove_file(&report.path)?;
                    output.result("split", &split, || Some(split.index.display().to_string()))?;
                }
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
            output.result("manpages", &json::Manpages { dir: out }, || None)?;
        }
        Command::Split {
            bundle,
            volume_size,
            parity,
            out,
        } => {
            let split = split_into(&bundle, &out, volume_size, parity.unwrap_or(0))?;
            output.result("split", &split, || Some(split.index.display().to_string()))?;
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
            output.result(
                "joined",
                &json::Joined {
                    bundle: out.clone(),
                    volumes: set.index.volumes.len(),
                    sha256: set.index.sha256.to_hex(),
                    size: set.index.size,
                },
                || Some(out.display().to_string()),
            )?;
        }
        Command::Sign { bundle, key, out } => {
            let key = load_key(&key)?;
            let timestamp = source_date_epoch()?.unwrap_or_else(unix_now);
            let target = out.as_deref().unwrap_or(&bundle);
            let signers = sign_bundle(&bundle, &key, timestamp, target).map_err(|e| {
                let help = match &e {
                    BuildError::Durable(d)
                        if out.is_none()
                            && matches!(
                                d.source.kind(),
                                std::io::ErrorKind::ReadOnlyFilesystem
                                    | std::io::ErrorKind::PermissionDenied
                            ) =>
                    {
                        Some("the bundle's folder cannot be written (read-only media?): write the signed bundle elsewhere with `--out FILE`".to_owned())
                    }
                    _ => None,
                };
                let error = anyhow::Error::new(e).context(format!("signing {}", bundle.display()));
                Failure {
                    help: help.or_else(|| help_for(&error)),
                    error,
                    code: EXIT_FAILED,
                }
            })?;
            if out.is_some() {
                eprintln!(
                    "wrote {} signed by key {} ({} left as it was); it has {} signature(s)",
                    target.display(),
                    key.key_id(),
                    bundle.display(),
                    signers.len()
                );
            } else {
                eprintln!(
                    "signed {} with key {}; it now has {} signature(s)",
                    bundle.display(),
                    key.key_id(),
                    signers.len()
                );
            }
            output.result(
                "signed",
                &json::Signed {
                    bundle: target.to_owned(),
                    source: bundle.clone(),
                    key_id: key.key_id().to_string(),
                    signatures: signers.iter().map(ToString::to_string).collect(),
                },
                || out.as_ref().map(|o| o.display().to_string()),
            )?;
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
                        .map(|e| format!(", expires at {}", rfc3339(e)))
                        .unwrap_or_default()
                );
                let key_ids = doc
                    .trust()
                    .map(|t| t.keys().iter().map(|k| k.key_id().to_string()).collect())
                    .unwrap_or_default();
                output.result(
                    "trust_update",
                    &json::TrustUpdate {
                        file: out.clone(),
                        version: doc.version,
                        threshold: doc.threshold,
                        keys: key_ids,
                        created_at: doc.created_at,
                        created_at_rfc3339: rfc3339(doc.created_at),
                        expires_at: doc.expires_at,
                        expires_at_rfc3339: doc.expires_at.map(rfc3339),
                    },
                    || None,
                )?;
            }
            TrustCommand::Sign { file, key, out } => {
                let key = load_key(&key)?;
                let timestamp = source_date_epoch()?.unwrap_or_else(unix_now);
                let target = out.as_deref().unwrap_or(&file);
                let (doc, signers) =
                    airlock_builder::trust::sign_update(&file, &key, timestamp, target)
                        .with_context(|| format!("signing {}", file.display()))?;
                eprintln!(
                    "signed trust update {} (version {}) with key {}; it now has {} signature(s){}",
                    target.display(),
                    doc.version,
                    key.key_id(),
                    signers.len(),
                    if out.is_some() {
                        format!(" ({} left as it was)", file.display())
                    } else {
                        String::new()
                    }
                );
                output.result(
                    "trust_signed",
                    &json::TrustSigned {
                        file: target.to_owned(),
                        source: file.clone(),
                        version: doc.version,
                        key_id: key.key_id().to_string(),
                        signatures: signers.iter().map(ToString::to_string).collect(),
                    },
                    || out.as_ref().map(|o| o.display().to_string()),
                )?;
            }
        },
        Command::Inspect { bundle, export } => {
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
            let mut exported = Vec::new();
            if let Some(dir) = export {
                exported = check::export(&header, &dir)?;
                eprintln!(
                    "exported {} file(s) to {}: check them with `minisign -Vm {}/manifest.json -x {0}/signature-KEYID.minisig -p KEY.pub`",
                    exported.len(),
                    dir.display(),
                    dir.display()
                );
            }
            let mut inspection = check::Inspection::of(&header, &sha256)?;
            inspection.exported = exported;
            output.result("inspection", &inspection, || {
                Some(format!("{}sha256        {sha256}", check::render(&header)))
            })?;
        }
        Command::Verify {
            bundle,
            trust,
            threshold,
        } => match check::verify(&bundle, &trust, threshold) {
            Ok(verified) => {
                output.result("verified", &verified.facts(), || Some(verified.summary()))?;
            }
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
