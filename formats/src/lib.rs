//! What crosses the air gap: the airlock bundle format (docs/FORMAT.md).
//!
//! A bundle is one file, `NAME-VERSION.airlock`: a tar container holding a
//! format marker, the [`Manifest`] as JSON, minisign [`Signature`]s over the
//! exact manifest bytes, and a zstd-compressed tar payload whose chunks the
//! manifest hashes. [`read_bundle`] reads it in one pass and lets the caller
//! authenticate the manifest before any payload byte is read;
//! [`PayloadWriter`] and [`write_bundle`] produce it reproducibly.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bundle;
pub mod digest;
pub mod durable;
pub mod error;
pub mod manifest;
pub mod migration;
pub mod path;
pub mod payload;
pub mod shown;
pub mod signing;
pub mod time;
pub mod tree;
pub mod trust;
pub mod volumes;

pub use bundle::{
    bundle_head, bundle_tail, read_bundle, rewrite_signatures, write_bundle, write_bundle_carrying,
    BundleHeader, DiscardSink, PayloadSink,
};
pub use digest::Sha256Digest;
pub use error::{BundleError, ManifestError, PathError, SignatureError};
pub use manifest::{
    Direction, FileEntry, Hooks, Manifest, Migration, MigrationInfo, OnInterrupt, PayloadInfo,
    Role, FORMAT_MARKER,
};
pub use migration::{MigrationTool, MigrationVersion};
pub use path::BundlePath;
pub use payload::PayloadWriter;
pub use shown::shown;
pub use signing::{KeyId, PublicKey, SecretKey, Signature, Trust};
pub use tree::{Tree, TreeLink};
pub use trust::{TrustDocument, TrustError, TrustUpdate};
pub use volumes::{BundleSource, VolumeSet};

/// This crate's version, which is also the applier version bundles compare
/// their `min_applier_version` with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
