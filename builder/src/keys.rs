//! Release keys: `keygen`, loading a secret key, and adding a signature to a bundle.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use airlock_formats::durable::{write_atomic, write_bytes_atomic};
use airlock_formats::{rewrite_signatures, BundleSource, DiscardSink, KeyId, SecretKey};

use crate::error::BuildError;

/// `PATH.key` and `PATH.pub` for `--out PATH`.
pub fn key_paths(out: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = out.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".key"), with(".pub"))
}

/// Generates a key pair at `PATH.key` (mode 0600) and `PATH.pub`; the secret
/// key is protected by `passphrase` unless it is `None`. Refuses to overwrite.
///
/// # Errors
/// [`BuildError::Key`] when either file exists; I/O errors naming the file.
pub fn keygen(
    out: &Path,
    passphrase: Option<String>,
) -> Result<(KeyId, PathBuf, PathBuf), BuildError> {
    let (secret_path, public_path) = key_paths(out);
    for p in [&secret_path, &public_path] {
        if p.exists() {
            return Err(BuildError::Key {
                path: p.clone(),
                reason: "already exists; choose another --out or move the old key away".into(),
            });
        }
    }
    let folder = airlock_formats::durable::parent_of(&secret_path);
    fs_err::create_dir_all(folder).map_err(|source| BuildError::Io {
        context: "creating the key's folder".into(),
        source,
    })?;
    let generated = SecretKey::generate(passphrase)?;
    write_bytes_atomic(&secret_path, 0o600, generated.secret_text.as_bytes())?;
    write_bytes_atomic(
        &public_path,
        0o644,
        generated.public.to_minisign().as_bytes(),
    )?;
    Ok((generated.public.key_id(), secret_path, public_path))
}

/// Reads the secret key at `path`; `passphrase` is asked for only when the key is
/// encrypted.
///
/// # Errors
/// [`BuildError::Key`] naming the file for an unreadable key or a wrong passphrase.
pub fn load_secret_key(
    path: &Path,
    passphrase: impl FnOnce() -> Result<String, String>,
) -> Result<SecretKey, BuildError> {
    let key_err = |reason: String| BuildError::Key {
        path: path.to_owned(),
        reason,
    };
    // BuildError::Key names the file; fs-err would name it twice.
    #[allow(clippy::disallowed_methods)]
    let text = std::fs::read_to_string(path).map_err(|e| key_err(e.to_string()))?;
    let encrypted = SecretKey::is_encrypted(&text).map_err(|e| key_err(e.to_string()))?;
    let passphrase = if encrypted {
        Some(passphrase().map_err(key_err)?)
    } else {
        None
    };
    SecretKey::from_minisign(&text, passphrase).map_err(|e| key_err(e.to_string()))
}

/// Adds a signature by `key` to the bundle at `bundle` and writes the result
/// to `out` durably (a temporary file beside it, fsynced, renamed, its
/// folder fsynced). `out` may be `bundle` itself, which is then replaced;
/// any other `out` leaves `bundle` untouched, so it can be on read-only
/// media, and may be a volume set (docs/FORMAT.md, "Volumes") read whole.
/// Returns the key ids of the new bundle's signatures.
///
/// # Errors
/// [`BuildError`] when the bundle is damaged, already signed by this key,
/// or a volume set to be signed in place.
pub fn sign_bundle(
    bundle: &Path,
    key: &SecretKey,
    timestamp: u64,
    out: &Path,
) -> Result<Vec<KeyId>, BuildError> {
    let source = BundleSource::open(bundle)?;
    // Spelled differently, `out` may still be the bundle, or a file of the
    // set's folder (its index, a volume).
    let real = |p: &Path| {
        std::path::absolute(p)
            .ok()
            .and_then(|p| p.canonicalize().ok().or(Some(p)))
    };
    let in_place = out == bundle
        || real(out) == real(bundle)
        || match &source {
            BundleSource::Volumes(set) => {
                let folder = real(airlock_formats::durable::parent_of(&set.index_path));
                real(airlock_formats::durable::parent_of(out)) == folder
            }
            BundleSource::File { .. } => false,
        };
    if matches!(source, BundleSource::Volumes(_)) && in_place {
        // Volume 1 holds the signatures: a new one changes it, the index
        // and every parity volume, so a set is signed into one new file.
        return Err(BuildError::Invalid(format!(
            "`{}` is a volume set, which cannot be signed in place; sign it into one new bundle file with `airlock-build sign {0} --key KEY --out FILE`, then cut that with `airlock-build split FILE` if needed",
            bundle.display()
        )));
    }
    // Read it whole first: nobody should sign a bundle whose payload does not
    // match its manifest.
    let header = source.read(|_| Ok(()), Some(&mut DiscardSink))?;
    if header.signatures.iter().any(|s| s.key_id() == key.key_id()) {
        return Err(BuildError::AlreadySigned {
            bundle: bundle.to_owned(),
            key_id: key.key_id().to_string(),
        });
    }
    let mut signatures = header.signatures.clone();
    signatures.push(key.sign(
        &header.manifest_bytes,
        &format!(
            "timestamp:{timestamp}\tfile:{}",
            header.manifest.file_name()
        ),
    ));
    let input = source.reader()?;
    write_atomic(out, 0o644, |f| {
        let w = rewrite_signatures(
            std::io::BufReader::with_capacity(1 << 20, input),
            BufWriter::new(f),
            &signatures,
        )
        .map_err(std::io::Error::other)?;
        w.into_inner().map(|_| ()).map_err(|e| e.into_error())
    })?;
    Ok(signatures.iter().map(|s| s.key_id()).collect())
}
