//! `airlock-apply inspect` and `airlock-apply extract` (docs/OPERATIONS.md,
//! "Look inside a bundle"): what a bundle holds, read without the builder,
//! and one of its files written out for reading once the site's trusted
//! keys and the manifest's hash vouch for it.

use std::cell::RefCell;
use std::io::{BufReader, Read};
use std::path::Path;

use airlock_formats::bundle::PayloadSink;
use airlock_formats::digest::sha256_reader;
use airlock_formats::shown::bytes as bytes_shown;
use airlock_formats::time::rfc3339;
use airlock_formats::{BundleError, BundleHeader, BundleSource, FileEntry};
use serde::{Deserialize, Serialize};

use crate::error::ApplyError;
use crate::protocol::PROTOCOL;
use crate::site::Site;

/// The bundle's signatures checked against a site's trust in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustCheck {
    /// The site profile whose trust was used.
    pub site: String,
    /// Signatures that trust needs.
    pub threshold: usize,
    /// Trusted key ids whose signatures counted, sorted; empty when the
    /// threshold is not met.
    pub signers: Vec<String>,
    /// Whether the threshold is met: `verify` would accept the signatures
    /// (it also checks expiry, platform, versions and every payload byte).
    pub met: bool,
    /// Why not, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One file of the payload, as `inspect --files` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileShown {
    /// Its path in the payload: what `extract` takes.
    pub path: String,
    /// `binary`, `file`, `migration`, `hook` or `tree` (docs/FORMAT.md).
    pub role: String,
    /// Bytes.
    pub size: u64,
    /// Unix permission bits (`493` is `0755`).
    pub mode: u32,
    /// SHA-256 of its contents.
    pub sha256: String,
    /// Where it installs, when the manifest says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_path: Option<String>,
}

/// `airlock-apply inspect`: a bundle's manifest in short, its signatures,
/// its SHA-256 and, with `--files`, every file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspection {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// The bundle as given.
    pub bundle: String,
    /// Bundle name.
    pub name: String,
    /// The version it installs.
    pub version: String,
    /// `OS-ARCH` it was built for.
    pub platform: String,
    /// SemVer requirement on the installed version.
    pub upgrades_from: String,
    /// Lowest airlock-apply that may apply it.
    pub min_applier_version: String,
    /// Whether a rolling upgrade may apply it.
    pub rolling_allowed: bool,
    /// Unix seconds.
    pub created_at: u64,
    /// [`rfc3339`] of `created_at`.
    pub created_at_rfc3339: String,
    /// Unix seconds.
    pub expires_at: Option<u64>,
    /// [`rfc3339`] of `expires_at`.
    pub expires_at_rfc3339: Option<String>,
    /// SHA-256 of the bundle file (of the joined volumes for a set).
    pub sha256: String,
    /// Bytes of the bundle file (of the joined volumes).
    pub size: u64,
    /// Bytes of the compressed payload.
    pub payload_size: u64,
    /// Bytes of the payload unpacked.
    pub unpacked_size: u64,
    /// Files in the payload.
    pub file_count: usize,
    /// Key ids of every signature, as written (not checked).
    pub signatures: Vec<String>,
    /// The version of the trust update it carries.
    pub carries_trust_version: Option<u64>,
    /// The signatures against the site's trust, when a site profile was
    /// found (`--site`, `AIRLOCK_SITE` or `/etc/airlock/site.toml`).
    pub trust: Option<TrustCheck>,
    /// Every file, with `--files`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileShown>>,
}

/// `airlock-apply extract`: the file written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extracted {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// Its path in the payload.
    pub path: String,
    /// Where it was written.
    pub out: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, as the signed manifest says.
    pub sha256: String,
    /// Trusted key ids whose signatures counted.
    pub signers: Vec<String>,
}

fn unreadable(bundle: &Path, e: BundleError) -> ApplyError {
    match e {
        BundleError::Io { context, source } => ApplyError::io(context)(source),
        other => ApplyError::Refused {
            bundle: bundle.to_owned(),
            reason: other.to_string(),
            help: "check it with `airlock-apply check-media`, and copy it again from the release medium if it is damaged".into(),
        },
    }
}

fn role_name(entry: &FileEntry) -> String {
    serde_json::to_value(entry.role)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Reads `bundle`'s header without unpacking its payload and hashes the
/// whole bundle; checks its signatures against `site`'s trust when given.
/// Changes nothing.
///
/// # Errors
/// [`ApplyError::Refused`] (exit 3) when it is malformed, short or a volume
/// is missing; [`ApplyError::Io`] when it cannot be read.
pub fn inspect(bundle: &Path, site: Option<&Site>, files: bool) -> Result<Inspection, ApplyError> {
    let source = BundleSource::open(bundle).map_err(|e| unreadable(bundle, e))?;
    let header = source
        .read(|_| Ok(()), None)
        .map_err(|e| unreadable(bundle, e))?;
    let reader = source.reader().map_err(|e| unreadable(bundle, e))?;
    let (sha256, size) = sha256_reader(BufReader::with_capacity(1 << 20, reader))
        .map_err(ApplyError::io(format!("reading `{}`", bundle.display())))?;
    let m = &header.manifest;
    let trust = site.map(|site| {
        let checked = site.trust.check(&header.manifest_bytes, &header.signatures);
        TrustCheck {
            site: site.path.display().to_string(),
            threshold: site.trust.threshold(),
            met: checked.is_ok(),
            signers: checked
                .as_ref()
                .map(|ids| ids.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            reason: checked.err().map(|e| e.to_string()),
        }
    });
    Ok(Inspection {
        protocol: PROTOCOL,
        bundle: bundle.display().to_string(),
        name: m.name.clone(),
        version: m.version.to_string(),
        platform: m.platform.clone(),
        upgrades_from: m.upgrades_from.to_string(),
        min_applier_version: m.min_applier_version.to_string(),
        rolling_allowed: m.rolling_allowed,
        created_at: m.created_at,
        created_at_rfc3339: rfc3339(m.created_at),
        expires_at: m.expires_at,
        expires_at_rfc3339: m.expires_at.map(rfc3339),
        sha256: sha256.to_hex(),
        size,
        payload_size: m.payload.size,
        unpacked_size: m.payload.unpacked_size,
        file_count: m.files.len(),
        signatures: header
            .signatures
            .iter()
            .map(|s| s.key_id().to_string())
            .collect(),
        carries_trust_version: carried_version(&header),
        trust,
        files: files.then(|| {
            m.files
                .iter()
                .map(|f| FileShown {
                    path: f.path.to_string(),
                    role: role_name(f),
                    size: f.size,
                    mode: f.mode,
                    sha256: f.sha256.to_hex(),
                    install_path: f.install_path.clone(),
                })
                .collect()
        }),
    })
}

fn carried_version(header: &BundleHeader) -> Option<u64> {
    header
        .trust_update
        .as_deref()
        .and_then(|bytes| airlock_formats::TrustUpdate::from_json(bytes).ok())
        .map(|(_, document)| document.version)
}

impl Inspection {
    /// The inspection as text for a person.
    pub fn render(&self) -> String {
        let mut out = format!("bundle        {} {}\n", self.name, self.version);
        out.push_str(&format!("platform      {}\n", self.platform));
        out.push_str(&format!("upgrades from {}\n", self.upgrades_from));
        out.push_str(&format!(
            "needs         airlock-apply >= {}\n",
            self.min_applier_version
        ));
        out.push_str(&format!(
            "rolling       {}\n",
            if self.rolling_allowed {
                "allowed"
            } else {
                "not allowed"
            }
        ));
        out.push_str(&format!("created at    {}\n", self.created_at_rfc3339));
        if let Some(e) = &self.expires_at_rfc3339 {
            out.push_str(&format!("expires at    {e}\n"));
        }
        out.push_str(&format!(
            "payload       {} files, {} unpacked, {} compressed\n",
            self.file_count,
            bytes_shown(self.unpacked_size),
            bytes_shown(self.payload_size)
        ));
        if let Some(v) = self.carries_trust_version {
            out.push_str(&format!("trust update  version {v}\n"));
        }
        out.push_str(&format!(
            "signatures    {}\n",
            if self.signatures.is_empty() {
                "none".to_string()
            } else {
                self.signatures.join(", ")
            }
        ));
        match &self.trust {
            Some(t) if t.met => out.push_str(&format!(
                "trust         signed by {} of {} needed by `{}`\n",
                t.signers.join(", "),
                t.threshold,
                t.site
            )),
            Some(t) => out.push_str(&format!(
                "trust         NOT MET for `{}`: {}\n",
                t.site,
                t.reason.as_deref().unwrap_or("")
            )),
            None => out.push_str("trust         not checked: no site profile found\n"),
        }
        out.push_str(&format!(
            "size          {} ({} bytes)\n",
            bytes_shown(self.size),
            self.size
        ));
        out.push_str(&format!("sha256        {}\n", self.sha256));
        if let Some(files) = &self.files {
            out.push_str("files:\n");
            for f in files {
                out.push_str(&format!(
                    "  {:<9} {:04o} {:>10}  {}{}\n",
                    f.role,
                    f.mode,
                    bytes_shown(f.size),
                    f.path,
                    f.install_path
                        .as_deref()
                        .map(|p| format!(" -> {p}"))
                        .unwrap_or_default()
                ));
            }
        }
        out
    }
}

/// The sink that keeps one file and reads past the others.
struct KeepOne<'a> {
    path: &'a str,
    out: &'a RefCell<Option<std::fs::File>>,
    verified: bool,
}

impl PayloadSink for KeepOne<'_> {
    fn write_file(
        &mut self,
        entry: &FileEntry,
        contents: &mut dyn Read,
    ) -> Result<(), BundleError> {
        let io = |e: std::io::Error| BundleError::Io {
            context: format!("reading payload entry `{}`", entry.path),
            source: e,
        };
        if entry.path.to_string() == self.path {
            if let Some(file) = self.out.borrow_mut().as_mut() {
                std::io::copy(contents, file).map_err(io)?;
                return Ok(());
            }
        }
        std::io::copy(contents, &mut std::io::sink()).map_err(io)?;
        Ok(())
    }

    fn verified(&mut self, entry: &FileEntry) -> Result<(), BundleError> {
        if entry.path.to_string() == self.path {
            self.verified = true;
        }
        Ok(())
    }
}

/// Writes the payload file `path` of `bundle` to `out`, once the bundle's
/// signatures meet `site`'s trust and the file matched the manifest's size
/// and SHA-256, and every chunk of the payload matched its hash. `out`
/// (mode 0644) is written beside itself, fsynced and renamed into place, so on any error it is
/// left as it was; temporary files an earlier, killed extract left beside it
/// are removed first.
///
/// # Errors
/// [`ApplyError::NotInBundle`] when the manifest has no such file;
/// [`ApplyError::Refused`] (exit 3) when the signatures do not meet the
/// trust or the bundle is damaged; [`ApplyError::Durable`] when `out`
/// cannot be written.
pub fn extract(
    site: &Site,
    bundle: &Path,
    path: &str,
    out: &Path,
) -> Result<Extracted, ApplyError> {
    let source = BundleSource::open(bundle).map_err(|e| unreadable(bundle, e))?;
    // An extract killed halfway leaves its temporary file beside `out`.
    airlock_formats::durable::remove_temps_beside(out)?;
    let mut entry: Option<FileEntry> = None;
    let mut signers = Vec::new();
    let mut refusal: Option<ApplyError> = None;
    let file: RefCell<Option<std::fs::File>> = RefCell::new(None);
    let mut failure: Option<ApplyError> = None;
    let written = airlock_formats::durable::write_atomic(out, 0o644, |f| {
        // The temporary file beside `out` receives the bytes; it replaces
        // `out` only when everything below succeeded.
        *file.borrow_mut() = Some(f.try_clone()?);
        let mut sink = KeepOne {
            path,
            out: &file,
            verified: false,
        };
        let read = source.read(
            |h| {
                match site.trust.check(&h.manifest_bytes, &h.signatures) {
                    Ok(ids) => signers = ids.iter().map(ToString::to_string).collect(),
                    Err(e) => {
                        refusal = Some(ApplyError::Refused {
                            bundle: bundle.to_owned(),
                            reason: e.to_string(),
                            help: format!(
                                "the site needs {} signature(s) by the keys `airlock-apply trust show` lists; nothing was written",
                                site.trust.threshold()
                            ),
                        });
                        return Err(BundleError::Refused("signatures".into()));
                    }
                }
                match h.manifest.files.iter().find(|f| f.path.to_string() == path) {
                    Some(found) => entry = Some(found.clone()),
                    None => {
                        refusal = Some(ApplyError::NotInBundle {
                            bundle: bundle.to_owned(),
                            path: airlock_formats::shown(path),
                        });
                        return Err(BundleError::Refused("no such file".into()));
                    }
                }
                Ok(())
            },
            Some(&mut sink),
        );
        file.borrow_mut().take();
        match read {
            Ok(_) if sink.verified => Ok(()),
            Ok(_) => {
                failure = Some(ApplyError::Refused {
                    bundle: bundle.to_owned(),
                    reason: format!(
                        "payload file `{}` was not in the payload",
                        airlock_formats::shown(path)
                    ),
                    help: "copy the bundle again from the release medium; nothing was written"
                        .into(),
                });
                Err(std::io::Error::other("not verified"))
            }
            Err(e) => {
                failure = Some(refusal.take().unwrap_or_else(|| unreadable(bundle, e)));
                Err(std::io::Error::other("refused"))
            }
        }
    });
    if let Some(e) = failure {
        return Err(match e {
            ApplyError::Refused {
                bundle,
                reason,
                help,
            } if !help.contains("nothing was written") => ApplyError::Refused {
                bundle,
                reason,
                help: format!("{help}; nothing was written"),
            },
            other => other,
        });
    }
    written?;
    let entry = entry.ok_or_else(|| ApplyError::NotInBundle {
        bundle: bundle.to_owned(),
        path: airlock_formats::shown(path),
    })?;
    Ok(Extracted {
        protocol: PROTOCOL,
        path: path.to_owned(),
        out: out.display().to_string(),
        size: entry.size,
        sha256: entry.sha256.to_hex(),
        signers,
    })
}
