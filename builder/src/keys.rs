//! Release keys: `keygen`, loading a secret key, and adding a signature to a bundle.

use fs_err::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use airlock_formats::durable::{write_atomic, write_bytes_atomic};
use airlock_formats::{read_bundle, rewrite_signatures, DiscardSink, KeyId, SecretKey};

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

/// Adds a signature by `key` to the bundle at `bundle`, replacing the file durably.
/// Returns how many signatures the bundle now has.
///
/// # Errors
/// [`BuildError`] when the bundle is damaged or already signed by this key.
pub fn sign_bundle(bundle: &Path, key: &SecretKey, timestamp: u64) -> Result<usize, BuildError> {
    if airlock_formats::VolumeSet::is_set(bundle) {
        // Volume 1 holds the signatures: a new one changes it, the index
        // and every parity volume, so a set is signed as the one file it
        // was cut from.
        return Err(BuildError::Invalid(format!(
            "`{}` is a volume set; sign the bundle file before cutting it: `airlock-build join {0} --out FILE`, `airlock-build sign FILE`, then `airlock-build split FILE`",
            bundle.display()
        )));
    }
    let open = || {
        File::open(bundle).map_err(|source| BuildError::Io {
            context: format!("opening bundle `{}`", bundle.display()),
            source,
        })
    };
    // Read it whole first: nobody should sign a bundle whose payload does not
    // match its manifest.
    let header = read_bundle(
        std::io::BufReader::new(open()?),
        |_| Ok(()),
        Some(&mut DiscardSink),
    )?;
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
    let input = open()?;
    write_atomic(bundle, 0o644, |f| {
        let w = rewrite_signatures(
            std::io::BufReader::new(input),
            BufWriter::new(f),
            &signatures,
        )
        .map_err(std::io::Error::other)?;
        w.into_inner().map(|_| ()).map_err(|e| e.into_error())
    })?;
    Ok(signatures.len())
}
