//! What `airlock-apply --json` prints on stdout, as typed, versioned
//! messages (docs/ARCHITECTURE.md, "The protocol"): one JSON object per line,
//! each with `"type"` and `"protocol"`. The rolling coordinator reads its
//! nodes only through these types, and refuses a node whose protocol
//! version differs from its own ([`parse_line`]).
//!
//! Every command's output is one of these messages (docs/JSON.md).

use serde::{Deserialize, Serialize};

use crate::error::ApplyError;
use crate::state::{ApplyKind, ApplyOutcome, RolloutNode, RolloutRecord};
use crate::transaction::step::Step;
use crate::transaction::undo::Undo;

/// The protocol version this airlock-apply speaks. It changes whenever a
/// message's shape changes in a way an older reader would misread.
pub const PROTOCOL: u32 = 2;

/// Event labels that are not a step's or an undo action's and that readers
/// act on.
pub mod label {
    /// The rollback as a whole: `start` when it begins, `ok` or `failed` when
    /// it ends (the old version runs again, or not).
    pub const ROLLBACK: &str = "rollback";
    /// `apply --wait-for-go` waits for the coordinator before the service
    /// stops: `start` when it waits, `ok` when it heard `go`.
    pub const WAIT_FOR_GO: &str = "wait for go";
}

/// How far an event's step got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The step starts.
    Start,
    /// The step finished.
    Ok,
    /// The step failed.
    Failed,
    /// Information, e.g. that the Raft data was kept.
    Info,
}

/// One event of a running command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// What it is about, for people and scripts: a step's label
    /// (`install`, `backup database`, ...), an undo action's (`restore`,
    /// `start old version`, ...) or the command's own (`lock`, `verify`,
    /// `rollback`, `done`, `node`, ...).
    pub step: String,
    /// How far it got.
    pub status: Status,
    /// Details: paths, versions, the error.
    pub detail: String,
    /// Milliseconds since the command started.
    pub elapsed_ms: u64,
    /// The transaction step this event is about, as `plan` lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_step: Option<Step>,
    /// The undo action this event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<Undo>,
}

/// The last line of a command that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// The error, as the `error:` line says it.
    pub error: String,
    /// The exit code (docs/OPERATIONS.md, "Exit codes").
    pub exit_code: u8,
    /// What to do next, as the `help:` line says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl ErrorReport {
    /// The report of `error`.
    pub fn of(error: &ApplyError) -> Self {
        Self {
            protocol: PROTOCOL,
            error: error.to_string(),
            exit_code: error.exit_code(),
            help: error.help(),
        }
    }
}

/// `airlock-apply status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// The installed version, if it can be found.
    pub installed: Option<InstalledReport>,
    /// Why it cannot be found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_error: Option<String>,
    /// The id of an interrupted apply that `resume` must finish or undo
    /// (`null` while it is still running).
    pub interrupted_apply: Option<i64>,
    /// An apply, resume or rollback running now: it holds the node's lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_apply: Option<RunningApply>,
    /// Why the site's trusted keys cannot be read: `verify` and `apply`
    /// refuse until it is fixed; `status` still works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_error: Option<String>,
    /// The last five applies, newest first.
    pub applies: Vec<ApplySummary>,
    /// Every backup folder, oldest first.
    pub backups: Vec<BackupSummary>,
}

/// An apply whose process is alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningApply {
    /// Its id, when it recorded one yet.
    pub id: Option<i64>,
    /// The pid that holds the lock.
    pub pid: String,
}

/// The installed version and where it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledReport {
    /// The version.
    pub version: String,
    /// `state database` or `version probe`.
    pub source: String,
}

/// One apply, in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplySummary {
    /// Id.
    pub id: i64,
    /// Apply or rollback.
    pub kind: ApplyKind,
    /// Bundle file (`rollback of #ID` for a rollback).
    pub bundle: String,
    /// From version.
    pub from: String,
    /// To version.
    pub to: String,
    /// Unix seconds.
    pub started_at: i64,
    /// [`airlock_formats::time::rfc3339`] of `started_at`.
    #[serde(default)]
    pub started_at_rfc3339: String,
    /// Unix seconds; the same time as its audit entry's `at`.
    pub finished_at: Option<i64>,
    /// [`airlock_formats::time::rfc3339`] of `finished_at`.
    #[serde(default)]
    pub finished_at_rfc3339: Option<String>,
    /// How it ended.
    pub outcome: ApplyOutcome,
    /// Its backup folder.
    pub backup_dir: Option<String>,
    /// Its error.
    pub error: Option<String>,
}

/// One backup folder, in `status` and `backups list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// The folder.
    pub dir: String,
    /// Whether it has `backup.json`.
    pub complete: bool,
    /// Version that was running.
    pub from: Option<String>,
    /// Version applied.
    pub to: Option<String>,
    /// Unix seconds.
    pub created_at: Option<i64>,
    /// [`airlock_formats::time::rfc3339`] of `created_at`.
    #[serde(default)]
    pub created_at_rfc3339: Option<String>,
    /// Bytes in it.
    pub size: u64,
    /// Whether every copy matched its SHA-256 (`backups list|verify` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intact: Option<bool>,
    /// What did not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// `airlock-apply plan`: the steps `apply` would take here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// Bundle name.
    pub name: String,
    /// Installed version.
    pub from: String,
    /// Where the installed version was read.
    pub from_source: String,
    /// Version to install.
    pub to: String,
    /// Key ids whose signatures count.
    pub signers: Vec<String>,
    /// The checks before the first step.
    pub checks: Vec<String>,
    /// The steps, in order: the same values `apply` executes.
    pub steps: Vec<PlannedStep>,
    /// Databases with nothing to migrate, and the like.
    pub notes: Vec<String>,
    /// Free space per filesystem.
    pub space: Vec<PlanSpace>,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    /// The step.
    pub step: Step,
    /// Its label, as events name it.
    pub label: String,
    /// What it will do.
    pub detail: String,
    /// Bytes it will write, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// Free space on one filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSpace {
    /// Folder.
    pub dir: String,
    /// What goes there.
    pub what: String,
    /// Bytes needed, with the margin.
    pub needed: u64,
    /// Bytes free now.
    pub available: u64,
    /// Whether it fits.
    pub fits: bool,
}

/// `airlock-apply rollout status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutReport {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// The newest rollout, if any.
    pub rollout: Option<RolloutRecord>,
    /// [`airlock_formats::time::rfc3339`] of its `started_at`.
    #[serde(default)]
    pub started_at_rfc3339: Option<String>,
    /// [`airlock_formats::time::rfc3339`] of its `finished_at`.
    #[serde(default)]
    pub finished_at_rfc3339: Option<String>,
    /// Its nodes.
    pub nodes: Vec<RolloutNode>,
}

/// `airlock-apply verify`: the bundle may be applied here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedReport {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// The bundle file as given.
    pub bundle: String,
    /// Bundle name.
    pub name: String,
    /// The version it installs.
    pub version: String,
    /// The version installed now.
    pub installed: String,
    /// Where that was read: `state database` or `version probe`.
    pub installed_source: String,
    /// Trusted key ids whose signatures counted, sorted.
    pub signers: Vec<String>,
    /// Signatures the site's trust needs.
    pub threshold: usize,
    /// SHA-256 of the whole bundle file (of the joined volumes for a set).
    pub sha256: String,
    /// Files in the payload.
    pub files: usize,
    /// Bytes of the payload unpacked.
    pub unpacked_size: u64,
    /// When it was built, Unix seconds.
    pub created_at: u64,
    /// [`airlock_formats::time::rfc3339`] of `created_at`.
    pub created_at_rfc3339: String,
    /// When it expires, Unix seconds.
    pub expires_at: Option<u64>,
    /// [`airlock_formats::time::rfc3339`] of `expires_at`.
    pub expires_at_rfc3339: Option<String>,
    /// The rules an option let it break (`--allow-expired`, ...), in words.
    pub overrides: Vec<String>,
    /// The trust version of a trust update it carries that `apply` would
    /// install.
    pub carries_trust_version: Option<u64>,
}

/// `airlock-apply apply`: the new version runs and is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedReport {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// The version before.
    pub from: String,
    /// The version now installed.
    pub to: String,
    /// The whole command, milliseconds.
    pub elapsed_ms: u64,
    /// From the service's stop to its health check passing, milliseconds.
    pub downtime_ms: u64,
    /// The migrations run, `DATABASE:VERSION` each.
    pub migrations: Vec<String>,
    /// The backup folder of this apply.
    pub backup_dir: String,
    /// Its log file.
    pub log: String,
}

/// One audit entry as `history` shows it: the stored row and its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The row as stored (its hash covers these fields).
    #[serde(flatten)]
    pub row: crate::state::AuditRow,
    /// [`airlock_formats::time::rfc3339`] of `at`.
    pub at_rfc3339: String,
}

/// `airlock-apply history`: the audit log, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryReport {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// Every entry; empty when the node has no state database yet.
    pub entries: Vec<HistoryEntry>,
}

/// `airlock-apply history --check` that found the chain intact (a damaged
/// one is an error, exit 8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryCheckReport {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// Entries checked; 0 when the node has no state database yet.
    pub entries: usize,
    /// Always `true` here.
    pub intact: bool,
}

/// `airlock-apply backups list|verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupsReport {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// Every backup folder, oldest first.
    pub backups: Vec<BackupSummary>,
}

/// `airlock-apply backups prune`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedReport {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// Complete backups kept, at most.
    pub keep: usize,
    /// The folders removed.
    pub removed: Vec<String>,
}

/// `airlock-apply check-media`: the bundle is whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaReport {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// The bundle file, or the volume set's index.
    pub bundle: String,
    /// SHA-256 of the bundle (of the joined volumes for a set); `null` when
    /// a set is usable only through its parity.
    pub sha256: Option<String>,
    /// Each volume of a set, in order (empty for one file).
    pub volumes: Vec<airlock_formats::volumes::VolumeCheck>,
    /// The verdict in words.
    pub verdict: String,
}

/// `airlock-apply repair`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairedReport {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// The new folder with the complete set; `null` when nothing needed it.
    pub out: Option<String>,
    /// The volumes rebuilt from parity.
    pub rebuilt: Vec<String>,
}

/// One line of `--json` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// A step's progress.
    Event(Event),
    /// The command failed.
    Error(ErrorReport),
    /// `status`.
    Status(StatusReport),
    /// `plan`.
    Plan(Plan),
    /// `rollout status`.
    Rollout(RolloutReport),
    /// `verify`.
    Verified(VerifiedReport),
    /// `apply` that installed the new version.
    Applied(AppliedReport),
    /// `history`.
    History(HistoryReport),
    /// `history --check`.
    HistoryCheck(HistoryCheckReport),
    /// `backups list|verify`.
    Backups(BackupsReport),
    /// `backups prune`.
    Pruned(PrunedReport),
    /// `check-media`.
    Media(MediaReport),
    /// `repair`.
    Repaired(RepairedReport),
    /// `trust show`.
    Trust(crate::commands::trust::Shown),
    /// `trust install`.
    TrustInstalled(crate::commands::trust::Installed),
    /// `inspect`.
    Inspection(crate::commands::inspect::Inspection),
    /// `extract`.
    Extracted(crate::commands::inspect::Extracted),
}

impl Message {
    /// The message as one line of JSON.
    pub fn to_line(&self) -> String {
        // Serializing these types cannot fail: no maps with non-string keys.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","protocol":{PROTOCOL},"error":"encoding a message: {e}","exit_code":1}}"#)
        })
    }
}

/// Why a line is not a message this airlock-apply can read.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// It speaks another protocol version (or none: an older airlock).
    #[error("protocol {}, expected {PROTOCOL}", .found.map_or_else(|| "without a version".to_string(), |v| v.to_string()))]
    Version {
        /// The version it sent.
        found: Option<u32>,
    },
    /// It is not JSON, or not a message of this protocol.
    #[error("`{line}` is not an airlock-apply message: {source}")]
    Invalid {
        /// The line, shortened.
        line: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Deserialize)]
struct Envelope {
    protocol: Option<u32>,
}

/// Reads one line of another airlock-apply's `--json` output.
///
/// # Errors
/// [`ProtocolError::Version`] when it speaks another protocol version;
/// [`ProtocolError::Invalid`] when the line is not a message.
pub fn parse_line(line: &str) -> Result<Message, ProtocolError> {
    let invalid = |source| ProtocolError::Invalid {
        line: line.chars().take(200).collect(),
        source,
    };
    let envelope: Envelope = serde_json::from_str(line).map_err(invalid)?;
    if envelope.protocol != Some(PROTOCOL) {
        return Err(ProtocolError::Version {
            found: envelope.protocol,
        });
    }
    serde_json::from_str(line).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_their_fields_and_round_trip() {
        let event = Message::Event(Event {
            protocol: PROTOCOL,
            step: "install".into(),
            status: Status::Start,
            detail: "bin/x -> /x".into(),
            elapsed_ms: 12,
            apply_step: Some(Step::Install {
                file: "bin/x".into(),
                target: "/x".into(),
                mode: 0o755,
                staging: Default::default(),
            }),
            undo: None,
        });
        let line = event.to_line();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["type"], "event");
        assert_eq!(value["step"], "install");
        assert_eq!(value["status"], "start");
        assert_eq!(value["apply_step"]["kind"], "install");
        assert_eq!(parse_line(&line).unwrap(), event);
    }

    #[test]
    fn another_protocol_version_is_refused() {
        let old = r#"{"step":"stop","status":"start","detail":"","elapsed_ms":1}"#;
        assert!(matches!(
            parse_line(old),
            Err(ProtocolError::Version { found: None })
        ));
        let newer = format!(
            r#"{{"type":"event","protocol":{},"step":"stop"}}"#,
            PROTOCOL + 1
        );
        assert!(matches!(
            parse_line(&newer),
            Err(ProtocolError::Version { found: Some(v) }) if v == PROTOCOL + 1
        ));
        let older = r#"{"type":"event","protocol":1,"step":"stop"}"#;
        assert!(matches!(
            parse_line(older),
            Err(ProtocolError::Version { found: Some(1) })
        ));
        assert!(matches!(
            parse_line("not json"),
            Err(ProtocolError::Invalid { .. })
        ));
    }
}
