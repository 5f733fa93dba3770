//! The site operator's side of airlock: verify a bundle against the site
//! profile, plan and apply it to a node with backups and automatic rollback,
//! finish or undo an interrupted apply, and keep an audit trail. The
//! `airlock-apply` binary is a thin command line over this crate.

pub mod apply;
pub mod backup;
pub mod cluster;
pub mod error;
pub mod interrupt;
pub mod lock;
pub mod migrate;
pub mod plan;
pub mod recovery;
pub mod report;
pub mod rolling;
pub mod run;
pub mod service;
pub mod site;
pub mod stage;
pub mod state;
pub mod verify;

pub use apply::{apply, ApplyReport};
pub use error::{exit, ApplyError};
pub use interrupt::Interrupt;
pub use report::Reporter;
pub use site::Site;
pub use verify::{read_and_verify, VerifyOptions};
