//! Trust updates on the release engineer's side (docs/OPERATIONS.md,
//! "Rotating release keys"): `airlock-build trust new` writes an unsigned
//! update for a set of public keys, `trust sign` adds signatures; the site
//! installs it with `airlock-apply trust install`. The format is
//! docs/FORMAT.md, "Trust updates".

use std::io::Write as _;
use std::path::Path;

use airlock_formats::durable::write_atomic;
use airlock_formats::{KeyId, PublicKey, SecretKey, Signature, TrustDocument, TrustUpdate};

use crate::error::BuildError;

fn invalid(file: &Path, e: impl std::fmt::Display) -> BuildError {
    BuildError::Invalid(format!("trust update `{}`: {e}", file.display()))
}

fn write(file: &Path, update: &TrustUpdate) -> Result<(), BuildError> {
    let bytes = update.to_json().map_err(|e| invalid(file, e))?;
    write_atomic(file, 0o644, |f| f.write_all(&bytes))?;
    Ok(())
}

/// Writes a new, unsigned trust update to `out`: version `version` (2 or
/// more, above the one the sites run), trusting the minisign public keys
/// in the files `keys`, `threshold` of which must sign; made at
/// `created_at` (Unix seconds) and expiring `expires_after_days` later.
///
/// # Errors
/// [`BuildError::Key`] naming an unreadable key file; [`BuildError::Invalid`]
/// when the threshold, version or expiry break a rule.
pub fn new_update(
    keys: &[std::path::PathBuf],
    threshold: usize,
    version: u64,
    created_at: u64,
    expires_after_days: Option<u64>,
    out: &Path,
) -> Result<TrustDocument, BuildError> {
    let mut public = Vec::new();
    for path in keys {
        let key_err = |reason: String| BuildError::Key {
            path: path.clone(),
            reason,
        };
        // BuildError::Key names the file; fs-err would name it twice.
        #[allow(clippy::disallowed_methods)]
        let text = std::fs::read_to_string(path).map_err(|e| key_err(e.to_string()))?;
        public.push(PublicKey::from_minisign(&text).map_err(|e| key_err(e.to_string()))?);
    }
    let expires_at =
        expires_after_days.map(|d| created_at.saturating_add(d.saturating_mul(86_400)));
    let document = TrustDocument::new(version, &public, threshold, created_at, expires_at)
        .map_err(|e| invalid(out, e))?;
    let update = TrustUpdate::unsigned(&document).map_err(|e| invalid(out, e))?;
    write(out, &update)?;
    Ok(document)
}

/// Adds a signature by `key` to the trust update `file` (replacing that
/// key's earlier one) and writes the result to `out` durably: `file`
/// itself, or a new file that leaves `file` untouched. Returns the document
/// and the key ids of the signatures the update now has.
///
/// # Errors
/// [`BuildError::Invalid`] when the file is not a trust update.
pub fn sign_update(
    file: &Path,
    key: &SecretKey,
    timestamp: u64,
    out: &Path,
) -> Result<(TrustDocument, Vec<KeyId>), BuildError> {
    let bytes = fs_err::read(file).map_err(|e| BuildError::Io {
        context: "reading the trust update".into(),
        source: e,
    })?;
    let (mut update, document) = TrustUpdate::from_json(&bytes).map_err(|e| invalid(file, e))?;
    let signature = key.sign(
        update.trust.as_bytes(),
        &format!("timestamp:{timestamp}\ttrust version:{}", document.version),
    );
    update
        .add_signature(&signature)
        .map_err(|e| invalid(file, e))?;
    write(out, &update)?;
    let signers = update
        .signatures()
        .map_err(|e| invalid(file, e))?
        .iter()
        .map(Signature::key_id)
        .collect();
    Ok((document, signers))
}
