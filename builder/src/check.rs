//! `airlock-build inspect` and `airlock-build verify`: a bundle's header
//! read without its payload, and the whole bundle checked against a set of
//! trusted keys (docs/FORMAT.md, "Reader rules" and "Threshold").

use std::io::BufReader;
use std::path::{Path, PathBuf};

use airlock_formats::digest::sha256_reader;
use airlock_formats::time::rfc3339;
use airlock_formats::{
    BundleError, BundleHeader, BundleSource, DiscardSink, KeyId, PublicKey, Sha256Digest,
    SignatureError, Trust,
};
use serde::Serialize;

use crate::error::BuildError;

/// Writes the bundle's exact manifest bytes as `DIR/manifest.json` and each
/// signature as `DIR/signature-KEYID.minisig` (its name in the container),
/// so anyone can check them with minisign itself: `minisign -Vm
/// manifest.json -x signature-KEYID.minisig -p KEY.pub`. Creates `dir`;
/// returns the files written.
///
/// # Errors
/// [`BuildError`] naming the file that cannot be written.
pub fn export(header: &BundleHeader, dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
    use std::io::Write as _;
    fs_err::create_dir_all(dir).map_err(|source| BuildError::Io {
        context: "creating the export folder".into(),
        source,
    })?;
    let mut written = Vec::new();
    let manifest = dir.join("manifest.json");
    airlock_formats::durable::write_atomic(&manifest, 0o644, |f| {
        f.write_all(&header.manifest_bytes)
    })?;
    written.push(manifest);
    for sig in &header.signatures {
        let path = dir.join(airlock_formats::bundle::signature_entry_name(sig));
        let text = sig.to_minisign();
        airlock_formats::durable::write_atomic(&path, 0o644, |f| f.write_all(text.as_bytes()))?;
        written.push(path);
    }
    Ok(written)
}

/// Reads a bundle's manifest and signatures without unpacking its payload,
/// checks that the file (or volume set, docs/FORMAT.md, "Volumes") is as
/// long as its container declares, and hashes it whole. Returns the header
/// and the bundle's SHA-256.
///
/// # Errors
/// [`BuildError::Bundle`] when it is malformed, short
/// ([`BundleError::Incomplete`]) or a volume is missing;
/// [`BuildError::Io`] when it cannot be read.
pub fn inspect(bundle: &Path) -> Result<(BundleHeader, Sha256Digest), BuildError> {
    let source = BundleSource::open(bundle)?;
    let header = source.read(|_| Ok(()), None)?;
    let (sha256, _) =
        sha256_reader(BufReader::with_capacity(1 << 20, source.reader()?)).map_err(|source| {
            BuildError::Io {
                context: format!("reading `{}`", bundle.display()),
                source,
            }
        })?;
    Ok((header, sha256))
}

/// One signature, as `inspect --json` shows it.
#[derive(Debug, Serialize)]
pub struct SignatureInfo {
    /// The signing key's id.
    pub key_id: String,
    /// The signature's trusted comment.
    pub trusted_comment: String,
}

/// What `inspect --json` prints: the manifest as signed, the signatures
/// and the bundle's SHA-256.
#[derive(Debug, Serialize)]
pub struct Inspection {
    /// The manifest, exactly as its JSON was signed.
    pub manifest: serde_json::Value,
    /// The signatures.
    pub signatures: Vec<SignatureInfo>,
    /// SHA-256 of the whole bundle (of the volumes joined, for a set).
    pub sha256: String,
    /// The manifest's `created_at`, Unix seconds.
    pub created_at: u64,
    /// `created_at` as RFC 3339.
    pub created_at_rfc3339: String,
    /// The manifest's `expires_at`, Unix seconds; `None` (`null`) when it has none.
    pub expires_at: Option<u64>,
    /// `expires_at` as RFC 3339.
    pub expires_at_rfc3339: Option<String>,
    /// The trust update the bundle carries: its signed document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_update: Option<airlock_formats::TrustDocument>,
    /// The files `--export` wrote.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exported: Vec<PathBuf>,
}

fn carried(header: &BundleHeader) -> Option<airlock_formats::TrustDocument> {
    header
        .trust_update
        .as_deref()
        .and_then(|bytes| airlock_formats::TrustUpdate::from_json(bytes).ok())
        .map(|(_, document)| document)
}

impl Inspection {
    /// The inspection of `header`.
    ///
    /// # Errors
    /// [`BuildError::Invalid`] if the manifest bytes are not JSON (they were
    /// parsed once already, so this does not happen for a header read by
    /// [`inspect`]).
    pub fn of(header: &BundleHeader, sha256: &Sha256Digest) -> Result<Self, BuildError> {
        let manifest = serde_json::from_slice(&header.manifest_bytes)
            .map_err(|e| BuildError::Invalid(format!("manifest.json: {e}")))?;
        Ok(Self {
            manifest,
            signatures: header
                .signatures
                .iter()
                .map(|s| SignatureInfo {
                    key_id: s.key_id().to_string(),
                    trusted_comment: s.trusted_comment().to_owned(),
                })
                .collect(),
            sha256: sha256.to_hex(),
            created_at: header.manifest.created_at,
            created_at_rfc3339: rfc3339(header.manifest.created_at),
            expires_at: header.manifest.expires_at,
            expires_at_rfc3339: header.manifest.expires_at.map(rfc3339),
            trust_update: carried(header),
            exported: Vec::new(),
        })
    }
}

/// A bundle's header as text for a person.
pub fn render(header: &BundleHeader) -> String {
    let m = &header.manifest;
    let mut out = format!("bundle        {} {}\n", m.name, m.version);
    out.push_str(&format!("platform      {}\n", m.platform));
    out.push_str(&format!("upgrades from {}\n", m.upgrades_from));
    out.push_str(&format!("needs applier >= {}\n", m.min_applier_version));
    out.push_str(&format!(
        "rolling       {}\n",
        if m.rolling_allowed {
            "allowed"
        } else {
            "not allowed"
        }
    ));
    out.push_str(&format!("created at    {}\n", rfc3339(m.created_at)));
    if let Some(e) = m.expires_at {
        out.push_str(&format!("expires at    {}\n", rfc3339(e)));
    }
    if let Some(doc) = carried(header) {
        out.push_str(&format!(
            "trust update  version {}: {} of {} key(s) must sign\n",
            doc.version,
            doc.threshold,
            doc.keys.len()
        ));
    }
    out.push_str(&format!(
        "payload       {} bytes compressed, {} bytes unpacked, {} chunk(s)\n",
        m.payload.size,
        m.payload.unpacked_size,
        m.payload.chunks.len()
    ));
    for database in m.migrated_databases() {
        match m.migrations(database) {
            Ok(list) => {
                let tool = list.first().map_or("none", |x| x.tool.name());
                let legacy = list.iter().any(|x| x.info.tool.is_none());
                let up = list
                    .iter()
                    .filter(|x| x.direction == airlock_formats::Direction::Up)
                    .count();
                let setup = list.first().map_or(String::new(), |x| {
                    format!(
                        " (foreign keys {}, history in {})",
                        if x.foreign_keys { "on" } else { "off" },
                        x.history_table
                    )
                });
                out.push_str(&format!(
                    "migrations    {database}: {tool}{setup}{}, {up} up, {} down\n",
                    if legacy {
                        " (inferred from the layout: built by airlock 0.1)"
                    } else {
                        ""
                    },
                    list.len() - up
                ));
            }
            Err(e) => out.push_str(&format!("migrations    {database}: {e}\n")),
        }
    }
    for tree in &m.trees {
        let (count, bytes) = m
            .tree_files(&tree.name)
            .fold((0u64, 0u64), |(n, b), (f, _)| (n + 1, b + f.size));
        out.push_str(&format!(
            "tree          {} -> {}: {count} file(s), {} folder(s), {} link(s), {bytes} bytes\n",
            tree.name,
            tree.install_path,
            tree.dirs.len(),
            tree.links.len()
        ));
    }
    if let Some(hook) = &m.hooks.pre_start {
        out.push_str(&format!(
            "pre_start     {hook} (if interrupted: {})\n",
            match m.hooks.pre_start_on_interrupt.unwrap_or_default() {
                airlock_formats::OnInterrupt::Rerun => "run again",
                airlock_formats::OnInterrupt::Rollback => "roll back",
            }
        ));
    }
    out.push_str("files:\n");
    for f in m
        .files
        .iter()
        .filter(|f| f.role != airlock_formats::Role::Tree)
    {
        let target = match (&f.install_path, &f.migration) {
            (Some(p), _) => format!(" -> {p}"),
            (None, Some(mig)) => format!(
                " (database {}, version {}, {}{})",
                mig.database,
                mig.version,
                match mig.direction {
                    airlock_formats::Direction::Up => "up",
                    airlock_formats::Direction::Down => "down",
                },
                if mig.transaction {
                    ""
                } else {
                    ", no transaction"
                }
            ),
            _ => String::new(),
        };
        out.push_str(&format!(
            "  {:<9} {:>12} {:o} {}  {}{target}\n",
            format!("{:?}", f.role).to_lowercase(),
            f.size,
            f.mode,
            f.sha256.to_hex().chars().take(16).collect::<String>(),
            f.path
        ));
    }
    if header.signatures.is_empty() {
        out.push_str("signatures:   none (unsigned: `airlock-build sign` it before use)\n");
    } else {
        out.push_str("signatures:\n");
    }
    for s in &header.signatures {
        out.push_str(&format!(
            "  key {}  ({})\n",
            s.key_id(),
            s.trusted_comment()
        ));
    }
    out
}

/// A bundle that passed `verify`.
#[derive(Debug)]
pub struct Verified {
    /// The bundle file, or the volume set's index or folder.
    pub bundle: PathBuf,
    /// Its manifest and signatures.
    pub header: BundleHeader,
    /// The trusted keys whose signatures counted.
    pub signers: Vec<KeyId>,
    /// How many were needed.
    pub threshold: usize,
    /// SHA-256 of the whole bundle (of the volumes joined, for a set).
    pub sha256: Sha256Digest,
    /// Size of the whole bundle, in bytes.
    pub size: u64,
}

/// What `verify --json` prints (docs/JSON.md, "verify").
#[derive(Debug, Serialize)]
pub struct VerifySummary {
    /// The bundle file, or the volume set's index or folder, as given.
    pub bundle: PathBuf,
    /// Bundle name.
    pub name: String,
    /// Bundle version.
    pub version: String,
    /// SHA-256 of the whole bundle.
    pub sha256: String,
    /// Size of the whole bundle, in bytes.
    pub size: u64,
    /// Number of payload files.
    pub files: usize,
    /// Size of the payload unpacked, in bytes.
    pub unpacked_size: u64,
    /// The trusted keys whose signatures counted toward the threshold, sorted.
    pub signers: Vec<String>,
    /// How many distinct trusted keys had to sign.
    pub threshold: usize,
    /// The key id of every signature the bundle carries, trusted or not,
    /// in the bundle's order.
    pub signatures: Vec<String>,
    /// When the bundle was built, Unix seconds.
    pub created_at: u64,
    /// `created_at` as RFC 3339.
    pub created_at_rfc3339: String,
    /// When sites refuse the bundle, Unix seconds; `None` (`null`) if never.
    pub expires_at: Option<u64>,
    /// `expires_at` as RFC 3339.
    pub expires_at_rfc3339: Option<String>,
}

impl Verified {
    /// The line `verify` prints.
    pub fn summary(&self) -> String {
        let m = &self.header.manifest;
        let ids: Vec<String> = self.signers.iter().map(ToString::to_string).collect();
        format!(
            "ok: {} {} ({} files) signed by {} of {} required key(s): {}",
            m.name,
            m.version,
            m.files.len(),
            self.signers.len(),
            self.threshold,
            ids.join(", ")
        )
    }

    /// The facts `verify --json` prints.
    pub fn facts(&self) -> VerifySummary {
        let m = &self.header.manifest;
        VerifySummary {
            bundle: self.bundle.clone(),
            name: m.name.clone(),
            version: m.version.to_string(),
            sha256: self.sha256.to_hex(),
            size: self.size,
            files: m.files.len(),
            unpacked_size: m.payload.unpacked_size,
            signers: self.signers.iter().map(ToString::to_string).collect(),
            threshold: self.threshold,
            signatures: self
                .header
                .signatures
                .iter()
                .map(|s| s.key_id().to_string())
                .collect(),
            created_at: m.created_at,
            created_at_rfc3339: rfc3339(m.created_at),
            expires_at: m.expires_at,
            expires_at_rfc3339: m.expires_at.map(rfc3339),
        }
    }
}

/// Why `verify` failed: the keys could not be used, or the bundle is not valid.
#[derive(Debug, thiserror::Error)]
pub enum VerifyFailure {
    /// A trusted key or the threshold is unusable.
    #[error(transparent)]
    Keys(BuildError),
    /// The bundle carries no signature at all (`build --unsigned`).
    #[error("bundle {} is unsigned: it carries no signature, the threshold is {threshold}", .bundle.display())]
    Unsigned {
        /// The bundle.
        bundle: PathBuf,
        /// How many distinct trusted keys must sign.
        threshold: usize,
    },
    /// The bundle is invalid (signature, threshold, tampering) or unreadable.
    #[error("bundle {} is not valid: {source}", .bundle.display())]
    Bundle {
        /// The bundle.
        bundle: PathBuf,
        /// Why.
        #[source]
        source: BundleError,
    },
}

impl VerifyFailure {
    /// Whether the bundle could not be read at all (an I/O error), rather than being invalid.
    pub fn unreadable(&self) -> bool {
        matches!(
            self,
            Self::Bundle {
                source: BundleError::Io { .. },
                ..
            }
        )
    }

    /// What to do next.
    pub fn help(&self) -> Option<&'static str> {
        match self {
            Self::Keys(_) => None,
            Self::Unsigned { .. } => Some("sign it first: `airlock-build sign BUNDLE --key KEY --out SIGNED` (or without --out, in place)"),
            Self::Bundle {
                source: BundleError::Io { .. },
                ..
            } => Some("check the bundle's path, or copy it again from the release medium"),
            Self::Bundle {
                source: BundleError::Signature(SignatureError::Threshold { .. }),
                ..
            } => Some("if the signatures are good but too few, ask another release key holder to run `airlock-build sign`"),
            Self::Bundle { .. } => Some("do not use this bundle; build it again or get a fresh copy"),
        }
    }
}

/// Checks `bundle` completely against the public keys in `trust` (minisign
/// `.pub` files), of which `threshold` distinct ones must have signed:
/// signatures, every chunk and every file.
///
/// # Errors
/// [`VerifyFailure`].
pub fn verify(
    bundle: &Path,
    trust: &[PathBuf],
    threshold: usize,
) -> Result<Verified, VerifyFailure> {
    let mut keys = Vec::new();
    for path in trust {
        let key_err = |reason: String| {
            VerifyFailure::Keys(BuildError::Key {
                path: path.clone(),
                reason,
            })
        };
        // BuildError::Key names the file; fs-err would name it twice.
        #[allow(clippy::disallowed_methods)]
        let text = std::fs::read_to_string(path).map_err(|e| key_err(e.to_string()))?;
        keys.push(PublicKey::from_minisign(&text).map_err(|e| key_err(e.to_string()))?);
    }
    let trust = Trust::new(keys, threshold)
        .map_err(|e| VerifyFailure::Keys(BuildError::Invalid(format!("--threshold: {e}"))))?;
    let invalid = |source| VerifyFailure::Bundle {
        bundle: bundle.to_owned(),
        source,
    };
    let source = BundleSource::open(bundle).map_err(invalid)?;
    let mut signers = Vec::new();
    let mut unsigned = false;
    let read = source.read_hashed(
        |h| {
            unsigned = h.signatures.is_empty();
            signers = trust.check(&h.manifest_bytes, &h.signatures)?;
            Ok(())
        },
        Some(&mut DiscardSink),
    );
    let (header, sha256) = match read {
        Ok(read) => read,
        Err(BundleError::Signature(_)) if unsigned => {
            return Err(VerifyFailure::Unsigned {
                bundle: bundle.to_owned(),
                threshold: trust.threshold(),
            })
        }
        Err(e) => return Err(invalid(e)),
    };
    Ok(Verified {
        bundle: bundle.to_owned(),
        header,
        signers,
        threshold: trust.threshold(),
        sha256,
        size: source.len(),
    })
}
