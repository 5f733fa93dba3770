//! What each step does on the node: stage, back up, install, migrate, and
//! control the service. [`crate::transaction`] decides when each runs,
//! journals it and undoes it; these modules only act, and return a typed
//! [`crate::error::StepError`] naming the file, database or command.

pub mod backup;
pub mod install;
pub mod migrate;
pub mod precopy;
pub mod service;
pub mod stage;
pub mod tree;
