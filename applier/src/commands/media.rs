//! `check-media` and `repair`: a bundle carried across on removable media
//! (docs/OPERATIONS.md, "Carrying a bundle across"; docs/FORMAT.md,
//! "Volumes"). Neither needs a site profile, and neither writes where the
//! bundle is: `repair` writes a new, complete set into another folder.

use std::path::Path;

use airlock_formats::volumes::{VolumeError, VolumeState};
use airlock_formats::{BundleError, BundleSource, DiscardSink};

use crate::error::ApplyError;
use crate::protocol::{MediaReport, RepairedReport, Status, PROTOCOL};
use crate::report::Reporter;

fn refused(bundle: &Path, reason: String, help: &str) -> ApplyError {
    ApplyError::Refused {
        bundle: bundle.to_owned(),
        reason,
        help: help.into(),
    }
}

/// Checks a copied bundle: a volume set volume by volume (size and SHA-256
/// against the index, every payload chunk against the manifest volume 1
/// holds), or a single file whole (its length, every chunk and file). One
/// `volume` event per volume, then the verdict and the bundle's SHA-256.
/// The signatures are checked by `verify`, `plan` and `apply`, against the
/// site's trust.
///
/// # Errors
/// [`ApplyError::Refused`] (exit 3) when a volume is bad or missing, or the
/// file is short or damaged, saying whether parity can rebuild it;
/// [`ApplyError::Io`] when it cannot be read.
pub fn check_media(bundle: &Path, reporter: &Reporter) -> Result<MediaReport, ApplyError> {
    let source = match BundleSource::open(bundle) {
        Ok(s) => s,
        Err(BundleError::Volumes(reason)) => {
            return Err(refused(
                bundle,
                reason,
                "give the bundle file, the volume index, or the folder the volumes are in",
            ))
        }
        Err(BundleError::Io { context, source }) => return Err(ApplyError::io(context)(source)),
        Err(e) => {
            return Err(refused(
                bundle,
                e.to_string(),
                "copy the bundle again from the release medium",
            ))
        }
    };
    match &source {
        BundleSource::Volumes(set) => {
            let check = set.check();
            for v in &check.volumes {
                let kind = if v.parity { "parity volume" } else { "volume" };
                let (status, what) = match &v.state {
                    VolumeState::Ok => (Status::Ok, "ok".to_string()),
                    VolumeState::Bad { reason } => (Status::Failed, format!("BAD: {reason}")),
                    VolumeState::Missing => (Status::Failed, "MISSING".to_string()),
                };
                reporter.event(kind, status, &format!("{}: {what}", v.file));
            }
            let verdict = check.verdict(set);
            if !check.usable() {
                return Err(refused(
                    bundle,
                    verdict,
                    if check.repairable() {
                        "rebuild the damaged volumes into a new folder with `airlock-apply repair`, then apply from there"
                    } else {
                        "copy the damaged volumes again from the release engineer's set, then run `airlock-apply check-media` again"
                    },
                ));
            }
            reporter.event("check-media", Status::Ok, &verdict);
            let report = MediaReport {
                protocol: PROTOCOL,
                bundle: set.index_path.display().to_string(),
                sha256: check.sha256.as_ref().map(ToString::to_string),
                volumes: check.volumes.clone(),
                verdict: verdict.clone(),
            };
            if let Some(sha) = check.sha256 {
                reporter.event(
                    "sha256",
                    Status::Ok,
                    &format!(
                        "{sha}  {} (compare with the one `airlock-build build` printed)",
                        set.index.bundle
                    ),
                );
            }
            Ok(report)
        }
        BundleSource::File { path, .. } => {
            // One pass: every chunk and file checked, every byte hashed.
            let (_, sha) = source
                .read_hashed(|_| Ok(()), Some(&mut DiscardSink))
                .map_err(|e| match e {
                    BundleError::Io { context, source } => ApplyError::io(context)(source),
                    other => refused(
                        bundle,
                        other.to_string(),
                        "copy the bundle again from the release medium",
                    ),
                })?;
            let verdict =
                "the file is complete and every payload chunk and file matches its manifest";
            reporter.event("check-media", Status::Ok, verdict);
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            reporter.event(
                "sha256",
                Status::Ok,
                &format!("{sha}  {name} (compare with the one `airlock-build build` printed)"),
            );
            Ok(MediaReport {
                protocol: PROTOCOL,
                bundle: path.display().to_string(),
                sha256: Some(sha.to_string()),
                volumes: Vec::new(),
                verdict: verdict.into(),
            })
        }
    }
}

/// Rebuilds a volume set's damaged and missing volumes from its parity
/// volumes into the new folder `out`, with the good volumes and the index,
/// so `out` holds a complete set. The set's own folder is only read.
///
/// # Errors
/// [`ApplyError::Refused`] (exit 3) when more volumes are damaged than
/// parity can rebuild, or the rebuilt ones do not match the index;
/// [`ApplyError::Io`] naming the file that could not be read or written.
pub fn repair(
    set_path: &Path,
    out: &Path,
    reporter: &Reporter,
) -> Result<RepairedReport, ApplyError> {
    let set = airlock_formats::VolumeSet::open(set_path).map_err(|e| {
        refused(
            set_path,
            e.to_string(),
            "give the volume index, or the folder the volumes are in",
        )
    })?;
    let check = set.check();
    if check.usable() {
        reporter.event(
            "repair",
            Status::Ok,
            &format!(
                "every volume of `{}` is ok: nothing to repair",
                set.index_path.display()
            ),
        );
        return Ok(RepairedReport {
            protocol: PROTOCOL,
            out: None,
            rebuilt: Vec::new(),
        });
    }
    reporter.event("repair", Status::Start, &check.verdict(&set));
    let rebuilt = set.repair(out).map_err(|e| match e {
        VolumeError::Io { context, source } => ApplyError::io(context)(source),
        other => refused(
            set_path,
            other.to_string(),
            "copy the damaged volumes again from the release engineer's set",
        ),
    })?;
    reporter.event(
        "repair",
        Status::Ok,
        &format!(
            "rebuilt {} from parity; `{}` holds the complete set: check it with `airlock-apply check-media {}`, then apply from there",
            rebuilt.join(", "),
            out.display(),
            out.display()
        ),
    );
    Ok(RepairedReport {
        protocol: PROTOCOL,
        out: Some(out.display().to_string()),
        rebuilt,
    })
}
