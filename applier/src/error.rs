//! Errors of verifying and applying bundles, and the exit code each maps to
//! (docs/OPERATIONS.md, "Exit codes").

use std::path::PathBuf;

use airlock_formats::durable::DurableError;
use airlock_formats::BundleError;
use thiserror::Error;

/// Why a command of the applier failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The site profile cannot be used.
    #[error("site profile `{path}`: {reason}")]
    Site {
        /// The profile.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Security: the bundle is not acceptable here (signature, threshold,
    /// expiry, platform, version rule, tampering). Nothing was changed.
    #[error("bundle `{bundle}` refused: {reason}")]
    Refused {
        /// The bundle file.
        bundle: PathBuf,
        /// Why.
        reason: String,
        /// What to do next.
        help: String,
    },
    /// Another apply holds the node's lock.
    #[error("another airlock-apply ({holder}) is running: lock `{lock}` is held")]
    Busy {
        /// The lock file.
        lock: PathBuf,
        /// The holder's pid, as it wrote it.
        holder: String,
    },
    /// An earlier apply was interrupted and must be finished or undone first.
    #[error("apply #{id} ({from} -> {to}) was interrupted and is not finished")]
    Interrupted {
        /// The interrupted apply's id.
        id: i64,
        /// Its from version.
        from: String,
        /// Its to version.
        to: String,
    },
    /// A rolling upgrade stopped; every node is on one version or the other.
    #[error("rolling upgrade to {version} stopped {node}: {reason}")]
    RolloutStopped {
        /// Version being rolled out.
        version: String,
        /// Where it stopped: `at node NAME`, `before any node stopped`, ...
        node: String,
        /// Why.
        reason: String,
        /// Where that node stands.
        node_outcome: NodeOutcome,
    },
    /// A check of stored data found damage (audit log, backups).
    #[error("{0}")]
    CheckFailed(String),
    /// A step failed before the service was stopped; nothing on the node changed.
    #[error("{step} failed: {reason}")]
    Preflight {
        /// The step.
        step: String,
        /// What failed.
        reason: String,
    },
    /// A step after the stop failed and the node was rolled back to the old version, healthy.
    #[error("apply of {version} failed at step `{step}`: {reason}; rolled back to {old_version}, which is running and healthy")]
    RolledBack {
        /// Version that failed.
        version: String,
        /// Version running now.
        old_version: String,
        /// Step that failed.
        step: String,
        /// What failed.
        reason: String,
    },
    /// A step failed and so did the rollback: the operator must act.
    #[error("apply of {version} failed at step `{step}`: {reason}; rollback did not complete: {rollback}")]
    NeedsOperator {
        /// Version that failed.
        version: String,
        /// Step that failed.
        step: String,
        /// What failed.
        reason: String,
        /// What failed during rollback.
        rollback: String,
    },
    /// The state database failed.
    #[error("state database `{path}`: {reason}")]
    State {
        /// The database file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A durable write failed.
    #[error(transparent)]
    Durable(#[from] DurableError),
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

/// Where the node a rollout stopped at stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeOutcome {
    /// Nothing on it changed (a check failed before its apply, or its apply refused to begin).
    Unchanged,
    /// Its apply failed and it rolled itself back: the old version runs, healthy.
    RolledBack,
    /// It needs the operator: its rollback did not complete, or its state is unknown.
    NeedsOperator,
}

/// Exit codes of `airlock-apply` (documented in docs/OPERATIONS.md).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Failed before anything changed (site profile, I/O, preflight).
    pub const FAILED: u8 = 1;
    /// The command line is wrong (clap's usage error).
    pub const USAGE: u8 = 2;
    /// The bundle was refused by verification; nothing changed.
    pub const REFUSED: u8 = 3;
    /// Apply failed and was rolled back; the old version runs, healthy.
    pub const ROLLED_BACK: u8 = 4;
    /// Apply failed and rollback did not complete: the operator must act.
    pub const NEEDS_OPERATOR: u8 = 5;
    /// Another apply holds the lock.
    pub const BUSY: u8 = 6;
    /// An interrupted apply must be resumed first.
    pub const INTERRUPTED: u8 = 7;
    /// `history --check` or `backups verify` found damage.
    pub const CHECK_FAILED: u8 = 8;
}

impl ApplyError {
    /// The exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Refused { .. } => exit::REFUSED,
            Self::RolledBack { .. } => exit::ROLLED_BACK,
            Self::NeedsOperator { .. } => exit::NEEDS_OPERATOR,
            Self::Busy { .. } => exit::BUSY,
            Self::Interrupted { .. } => exit::INTERRUPTED,
            Self::CheckFailed(_) => exit::CHECK_FAILED,
            Self::RolloutStopped { node_outcome, .. } => match node_outcome {
                NodeOutcome::Unchanged => exit::FAILED,
                NodeOutcome::RolledBack => exit::ROLLED_BACK,
                NodeOutcome::NeedsOperator => exit::NEEDS_OPERATOR,
            },
            _ => exit::FAILED,
        }
    }

    /// What the operator should do next, when there is more to say than the message.
    pub fn help(&self) -> Option<String> {
        match self {
            Self::Refused { help, .. } => Some(help.clone()),
            Self::Busy { .. } => Some(
                "wait for it to finish: `airlock-apply status` (a node) or `airlock-apply rollout status` (a cluster) shows it".into(),
            ),
            Self::RolloutStopped { node, .. } => Some(format!(
                "fix the cause (the rollout stopped {node}), then run `airlock-apply resume --site CLUSTER.toml` to continue, or `airlock-apply rollout abandon --site CLUSTER.toml` to give this rollout up; `airlock-apply rollout status --site CLUSTER.toml` shows every node"
            )),
            Self::Interrupted { .. } => Some(
                "run `airlock-apply resume --site SITE`: it rolls the apply back, or completes it if the new version was already healthy".into(),
            ),
            Self::RolledBack { .. } => Some(
                "the node runs the old version; read the failure above, fix the bundle or the site, and apply again".into(),
            ),
            Self::NeedsOperator { .. } => Some(
                "the node needs you: the error says what is running and what is not; docs/OPERATIONS.md, \"Rollback did not complete\", has the procedure, and `airlock-apply status` lists the backups".into(),
            ),
            Self::Site { .. } => Some("fix the field named above; docs/SITE.md describes every field".into()),
            _ => None,
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

impl From<BundleError> for ApplyError {
    fn from(e: BundleError) -> Self {
        Self::Preflight {
            step: "reading the bundle".into(),
            reason: e.to_string(),
        }
    }
}
