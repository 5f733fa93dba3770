//! The release engineer's side of airlock: build, sign, inspect and verify
//! bundles. The `airlock-build` binary is a thin command line over this crate.

pub mod build;
pub mod check;
pub mod error;
pub mod keys;
pub mod migrations;
pub mod spec;
pub mod trees;
pub mod trust;

pub use build::{build, prepare, this_platform, BuildOptions, BuildReport, Prepared};
pub use error::BuildError;
