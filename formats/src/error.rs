//! Typed errors of the bundle format. Each names the entry, key or field it is
//! about; the binaries add what to do next.

use thiserror::Error;

/// A payload path that breaks a rule of [`crate::BundlePath`].
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("invalid path `{}`: {reason}", crate::shown::shown(.path))]
pub struct PathError {
    /// The path as found.
    pub path: String,
    /// The rule it breaks.
    pub reason: &'static str,
}

/// A manifest that cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not valid JSON for this format version.
    #[error("manifest.json is not valid: {}", crate::shown::shown_at_most(.0, 400))]
    Json(String),
    /// A format version this reader does not know (fail closed).
    #[error("bundle format `{}` is not supported: this version reads `airlock-bundle/1`; use a newer airlock", crate::shown::shown(.0))]
    UnknownFormat(String),
    /// A field breaks a rule of docs/FORMAT.md. The values it quotes come
    /// from the bundle: they are shown escaped and cut short.
    #[error("manifest field `{}`: {}", crate::shown::shown(.field), crate::shown::shown_at_most(.reason, 400))]
    Invalid {
        /// The field, e.g. `files[bin/etcd]`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// A key or signature that cannot be parsed or does not verify.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The text is not in minisign's format.
    #[error("{what} is not in minisign format: {reason}")]
    Format {
        /// Which kind of text: `public key`, `secret key`, `signature`.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The secret key could not be decrypted.
    #[error("cannot open secret key: {0}")]
    SecretKey(String),
    /// Security: the signature by this key does not match the manifest bytes.
    #[error("signature by key {key_id} does not match the manifest: the bundle was altered or signed by another key")]
    Mismatch {
        /// Key id, 16 hex digits.
        key_id: String,
    },
    /// Security: fewer distinct trusted keys signed than the threshold asks.
    #[error("bundle is signed by {valid} trusted key(s), the threshold is {threshold}{detail}")]
    Threshold {
        /// Distinct trusted keys with a valid signature.
        valid: usize,
        /// Keys required.
        threshold: usize,
        /// Signatures that did not count, and why.
        detail: String,
    },
}

/// Why a bundle file was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Reading or writing failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being read or written.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A container header that is not a regular file (a GNU long name, a
    /// PAX record, a link), refused before it was read: docs/FORMAT.md,
    /// "Reader rules".
    #[error("malformed bundle: {0}")]
    Container(String),
    /// The file's layout breaks docs/FORMAT.md.
    #[error("malformed bundle: {0}")]
    Malformed(String),
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A signature problem.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A payload path is invalid.
    #[error("payload entry {0}")]
    Path(#[from] PathError),
    /// Security: a payload chunk does not match its signed digest.
    #[error("payload chunk {index} (bytes {start}..{end}) does not match its digest in the manifest: the bundle was altered or damaged")]
    ChunkMismatch {
        /// Chunk number, from 0.
        index: usize,
        /// First byte offset in the payload.
        start: u64,
        /// End offset (exclusive).
        end: u64,
    },
    /// Security: a payload entry breaks a rule (link, device, unlisted, duplicate, size, hash).
    #[error("payload entry `{}`: {reason}", crate::shown::shown(.path))]
    Entry {
        /// The entry's path as found.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The file is shorter than its container declares: a copy that did not
    /// finish.
    #[error("the bundle is incomplete: it is {have} bytes, but its container declares at least {need} ({} bytes missing); the copy did not finish", .need - .have)]
    Incomplete {
        /// Its size, in bytes.
        have: u64,
        /// The size its header declares, at least, in bytes.
        need: u64,
    },
    /// A volume set (docs/FORMAT.md, "Volumes") is missing volumes or has
    /// damaged ones; the message names them and says whether parity can
    /// rebuild them.
    #[error("{0}")]
    Volumes(String),
    /// Reading was stopped by the caller (e.g. verification failed before the payload).
    #[error("{0}")]
    Refused(String),
}

impl BundleError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// An entry error.
    pub fn entry(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Entry {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
