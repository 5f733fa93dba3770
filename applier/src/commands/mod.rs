//! One module per subcommand of `airlock-apply`, each a page that can be
//! read alone: it takes the lock it needs, does the work through
//! [`crate::transaction`] and [`crate::state`], and returns a typed result
//! (a [`crate::protocol`] message or an [`crate::error::ApplyError`]) that
//! the binary renders. Rolling upgrades live in [`crate::cluster`].

pub mod apply;
pub mod backups;
pub mod history;
pub mod inspect;
pub mod media;
pub mod plan;
pub mod resume;
pub mod rollback;
pub mod status;
pub mod trust;
pub mod verify;
