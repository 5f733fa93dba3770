//! The journal of an apply: what each row announces ([`Entry`]), and
//! [`fold`], which turns the rows of an interrupted apply back into what
//! `resume` needs: the undo records of every step that began, whether the
//! point of no return was passed, and whether resuming keeps dying at the
//! same place (the loop guard; docs/ARCHITECTURE.md, "Resume").

use serde::{Deserialize, Serialize};

use super::step::Step;
use super::undo::Undo;
use crate::state::{JournalRow, RowState};

/// What one journal row announces, before it acts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub enum Entry {
    /// A step of the apply.
    Step {
        /// The step.
        step: Step,
    },
    /// The apply is being undone.
    Rollback {
        /// Why: the step that failed and its error, or the interruption.
        reason: String,
    },
    /// One undo action of a rollback.
    Undo {
        /// The action.
        undo: Undo,
    },
    /// A `resume` picked the apply up.
    Resume,
    /// First row of a `rollback` command: the apply it undoes.
    RollbackOf {
        /// That apply's id.
        apply: i64,
    },
}

impl Entry {
    /// Name and detail, for messages: `install bin/demo -> ...`.
    pub fn describe(&self) -> String {
        let (label, detail) = match self {
            Self::Step { step } => (step.label(), step.describe()),
            Self::Rollback { reason } => ("rollback", reason.clone()),
            Self::Undo { undo } => (undo.label(), undo.describe()),
            Self::Resume => ("resume", String::new()),
            Self::RollbackOf { apply } => ("rollback of", format!("#{apply}")),
        };
        format!("{label} {detail}").trim().to_owned()
    }
}

/// What an apply's journal says happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fold {
    /// Undo records of the steps that began, oldest first, each once. A
    /// rollback replays them newest first.
    pub undo: Vec<Undo>,
    /// A step that changes the node began (the stop or later): undoing
    /// needs more than removing the staging folder.
    pub node_changed: bool,
    /// The `healthy` step began: the new version was healthy and its hook ran.
    pub point_of_no_return: bool,
    /// For a `rollback` command: the apply it undoes.
    pub rollback_of: Option<i64>,
    /// The newest step that began.
    pub last_step: Option<Step>,
    /// A rollback began (an undo action or its announcement).
    pub rolling_back: bool,
    /// The newest step or undo action, described, for messages.
    pub last: Option<String>,
    /// The loop guard: set when the last two `resume` attempts each died at
    /// the same entry (described here) without finishing it.
    pub stuck: Option<String>,
}

/// Folds an apply's journal rows (in `seq` order) into a [`Fold`].
pub fn fold(rows: &[JournalRow]) -> Fold {
    let mut fold = Fold::default();
    for row in rows {
        if let Some(undo) = &row.undo {
            if !fold.undo.contains(undo) {
                fold.undo.push(undo.clone());
            }
        }
        match &row.entry {
            Entry::Step { step } => {
                fold.node_changed |= step.changes_node();
                fold.point_of_no_return |= matches!(step, Step::Healthy { .. });
                fold.last_step = Some(step.clone());
            }
            Entry::RollbackOf { apply } => fold.rollback_of = Some(*apply),
            Entry::Rollback { .. } | Entry::Undo { .. } => fold.rolling_back = true,
            Entry::Resume => {}
        }
    }
    fold.last = rows
        .iter()
        .rev()
        .find(|r| matches!(r.entry, Entry::Step { .. } | Entry::Undo { .. }))
        .map(|r| r.entry.describe());
    fold.stuck = stuck(rows);
    fold
}

/// Where each `resume` attempt died: the last entry it began and never
/// ended, or `None` when it died before beginning one. Returns that place
/// when the last two attempts died at the same one.
fn stuck(rows: &[JournalRow]) -> Option<String> {
    let mut attempts: Vec<Vec<&JournalRow>> = Vec::new();
    for row in rows {
        match (&row.entry, attempts.last_mut()) {
            (Entry::Resume, _) => attempts.push(Vec::new()),
            (_, Some(attempt)) => attempt.push(row),
            (_, None) => {}
        }
    }
    let died_at = |attempt: &[&JournalRow]| {
        attempt
            .iter()
            .rev()
            .find(|r| r.state == RowState::Begun)
            .map(|r| r.entry.clone())
    };
    match attempts.as_slice() {
        [.., before, last] if died_at(before) == died_at(last) => Some(died_at(last).map_or_else(
            || "before it began an action".to_string(),
            |e| format!("at `{}`", e.describe()),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use semver::Version;

    use super::*;

    fn row(seq: i64, entry: Entry, undo: Option<Undo>, state: RowState) -> JournalRow {
        JournalRow {
            seq,
            entry,
            undo,
            state,
            error: None,
        }
    }

    fn step(step: Step) -> Entry {
        Entry::Step { step }
    }

    fn interrupted_apply() -> Vec<JournalRow> {
        let old = Version::new(1, 0, 0);
        vec![
            row(
                1,
                step(Step::Stage { files: 1, bytes: 1 }),
                Some(Undo::RemoveStaging {
                    dir: "/s".into(),
                    beside: Vec::new(),
                }),
                RowState::Done,
            ),
            row(
                2,
                step(Step::Stop {
                    command: "stop".into(),
                    wait_secs: 1,
                }),
                Some(Undo::StartOld { version: old }),
                RowState::Done,
            ),
            row(
                3,
                step(Step::Install {
                    file: "bin/x".into(),
                    target: "/x".into(),
                    mode: 0o755,
                    staging: Default::default(),
                }),
                Some(Undo::RemoveNewFile {
                    target: "/x".into(),
                }),
                RowState::Begun,
            ),
        ]
    }

    #[test]
    fn a_step_that_began_is_undone_even_if_it_never_finished() {
        let fold = fold(&interrupted_apply());
        assert!(fold.node_changed);
        assert!(!fold.point_of_no_return);
        assert_eq!(fold.undo.len(), 3);
        assert_eq!(
            fold.undo[2],
            Undo::RemoveNewFile {
                target: "/x".into()
            }
        );
        assert!(fold.last.unwrap().starts_with("install bin/x"));
        assert_eq!(fold.stuck, None);
    }

    #[test]
    fn the_same_undo_record_counts_once() {
        let mut rows = interrupted_apply();
        rows.push(row(
            4,
            step(Step::Install {
                file: "bin/x".into(),
                target: "/x".into(),
                mode: 0o755,
                staging: Default::default(),
            }),
            Some(Undo::RemoveNewFile {
                target: "/x".into(),
            }),
            RowState::Done,
        ));
        assert_eq!(fold(&rows).undo.len(), 3);
    }

    #[test]
    fn two_resumes_that_die_at_the_same_action_trip_the_loop_guard() {
        let restore = Entry::Undo {
            undo: Undo::StopNew,
        };
        let mut rows = interrupted_apply();
        rows.push(row(4, Entry::Resume, None, RowState::Begun));
        rows.push(row(5, restore.clone(), None, RowState::Begun));
        assert_eq!(fold(&rows).stuck, None, "one death is not a loop");
        rows.push(row(6, Entry::Resume, None, RowState::Begun));
        rows.push(row(7, restore.clone(), None, RowState::Done));
        rows.push(row(
            8,
            Entry::Undo {
                undo: Undo::StartOld {
                    version: Version::new(1, 0, 0),
                },
            },
            None,
            RowState::Begun,
        ));
        assert_eq!(fold(&rows).stuck, None, "the second died further on");
        rows.push(row(9, Entry::Resume, None, RowState::Begun));
        rows.push(row(10, restore, None, RowState::Done));
        rows.push(row(
            11,
            Entry::Undo {
                undo: Undo::StartOld {
                    version: Version::new(1, 0, 0),
                },
            },
            None,
            RowState::Begun,
        ));
        let stuck = fold(&rows).stuck.unwrap();
        assert!(stuck.contains("start old version 1.0.0"), "{stuck}");
    }
}
