//! The site operator's side of airlock: verify a bundle against the site
//! profile, plan and apply it to a node as one journaled transaction with
//! backups and automatic rollback, finish or undo an interrupted apply,
//! upgrade a Raft cluster one node at a time, and keep an audit trail. The
//! `airlock-apply` binary is a thin command line over this crate.
//!
//! docs/ARCHITECTURE.md maps the modules: [`commands`] (one per
//! subcommand), [`transaction`] (steps, undo, journal, outcome), [`steps`]
//! (what each step does), [`state`] (the state database), [`cluster`]
//! (rolling upgrades), [`protocol`] (the `--json` messages).

/// A fail point (docs/ARCHITECTURE.md, "Fail points"). Compiled in only
/// with the `failpoints` feature; `FAILPOINTS=NAME=pause` makes the process
/// wait there, `NAME=panic` makes it die there.
macro_rules! failpoint {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!(&$name);
    };
}

pub mod cluster;
pub mod commands;
pub mod error;
pub mod interrupt;
pub mod lock;
pub mod protocol;
pub mod report;
pub mod site;
pub mod state;
pub mod steps;
pub mod transaction;
pub mod verify;

pub use error::{exit, ApplyError, StepError};
pub use interrupt::Interrupt;
pub use report::Reporter;
pub use site::Site;
pub use verify::VerifyOptions;
