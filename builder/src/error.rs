//! Errors of building and signing bundles.

use std::path::PathBuf;

use airlock_formats::durable::DurableError;
use airlock_formats::{BundleError, ManifestError, SignatureError};
use thiserror::Error;

/// Why a build, keygen or sign failed. Each variant names the file it is about.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The spec cannot be read or parsed.
    #[error("bundle spec `{path}`: {reason}")]
    Spec {
        /// The spec file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A value in the spec breaks a rule.
    #[error("bundle spec: {0}")]
    Invalid(String),
    /// A source file is missing or unreadable.
    #[error("source `{path}`: {source}")]
    Source {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A migration folder breaks a naming rule.
    #[error("migrations `{path}`: {reason}")]
    Migration {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `[[tree]]` source breaks a rule (a link out of the tree, a special file, ...).
    #[error("tree `{path}`: {reason}")]
    Tree {
        /// The file, link or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A key file problem.
    #[error("key `{path}`: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The bundle already carries a signature by this key.
    #[error("bundle `{bundle}` is already signed by key {key_id}")]
    AlreadySigned {
        /// The bundle.
        bundle: PathBuf,
        /// The key id.
        key_id: String,
    },
    /// Writing output failed.
    #[error(transparent)]
    Durable(#[from] DurableError),
    /// Reading or writing the bundle failed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A signature or key problem.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// Other I/O, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
