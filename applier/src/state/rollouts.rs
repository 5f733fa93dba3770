//! The coordinator's record of rolling upgrades: `rollouts` and
//! `rollout_nodes` (docs/SITE.md, "The coordinator's rollout tables").

use rusqlite::{params, OptionalExtension as _};

use super::{now, text_enum, State, StateError};

text_enum! {
    /// How a rollout stands (`rollouts.outcome`).
    pub enum RolloutOutcome {
        /// Running, or its coordinator was killed.
        Running = "running",
        /// Every member runs the version.
        Ok = "ok",
        /// A node failed or a check stopped it; `resume` continues it.
        Stopped = "stopped",
        /// Given up with `rollout abandon`.
        Abandoned = "abandoned",
    }
}

impl RolloutOutcome {
    /// Whether the rollout is unfinished: `resume` continues it, a new one is refused.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Running | Self::Stopped)
    }
}

text_enum! {
    /// Where one node of a rollout stands (`rollout_nodes.state`).
    pub enum NodeState {
        /// Not yet checked.
        Pending = "pending",
        /// The node verified the bundle itself and waits for its turn.
        Verified = "verified",
        /// Its apply runs.
        Upgrading = "upgrading",
        /// It runs the version, healthy and caught up.
        Upgraded = "upgraded",
        /// Its apply failed and it rolled itself back.
        RolledBack = "rolled-back",
        /// It refused the bundle, its apply did not begin, or it needs the operator.
        Failed = "failed",
    }
}

/// A rolling upgrade, as the coordinator records it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RolloutRecord {
    /// Id.
    pub id: i64,
    /// Bundle file on the coordinator.
    pub bundle: String,
    /// Bundle name.
    pub name: String,
    /// Version being rolled out.
    pub version: String,
    /// Start, Unix seconds.
    pub started_at: i64,
    /// End, Unix seconds.
    pub finished_at: Option<i64>,
    /// How it stands.
    pub outcome: RolloutOutcome,
    /// Why it stopped.
    pub error: Option<String>,
}

/// One node of a rollout.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RolloutNode {
    /// Member name.
    pub node: String,
    /// Position in the cluster profile, from 0.
    pub position: i64,
    /// Version it runs, as last seen.
    pub version: Option<String>,
    /// Where it stands.
    pub state: NodeState,
    /// Last step seen.
    pub step: String,
    /// How long its service was down, milliseconds.
    pub stopped_ms: Option<i64>,
    /// How long its apply took, milliseconds.
    pub apply_ms: Option<i64>,
    /// What failed.
    pub error: Option<String>,
}

/// A change to a rollout node's row; `None` fields stay as they are, except
/// `error`, which is replaced.
#[derive(Debug, Clone, Default)]
pub struct NodeUpdate<'a> {
    /// New state.
    pub state: Option<NodeState>,
    /// New step.
    pub step: Option<&'a str>,
    /// Version seen.
    pub version: Option<&'a str>,
    /// Service down time, ms.
    pub stopped_ms: Option<i64>,
    /// Apply time, ms.
    pub apply_ms: Option<i64>,
    /// Error.
    pub error: Option<&'a str>,
}

impl State {
    /// Starts a rollout record with its nodes, all `pending`.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn begin_rollout(
        &self,
        bundle: &str,
        name: &str,
        version: &str,
        nodes: &[String],
    ) -> Result<i64, StateError> {
        self.conn
            .execute(
                "INSERT INTO rollouts (bundle, name, version, started_at, outcome) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![bundle, name, version, now(), RolloutOutcome::Running],
            )
            .map_err(|e| self.err(e))?;
        let id = self.conn.last_insert_rowid();
        self.add_rollout_nodes(id, nodes)?;
        Ok(id)
    }

    /// Adds the nodes of `nodes` a rollout does not list yet, as `pending`.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn add_rollout_nodes(&self, rollout: i64, nodes: &[String]) -> Result<(), StateError> {
        for (position, node) in (0_i64..).zip(nodes) {
            self.conn
                .execute(
                    "INSERT OR IGNORE INTO rollout_nodes (rollout_id, node, position, state, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![rollout, node, position, NodeState::Pending, now()],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Updates a rollout node's row.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn update_rollout_node(
        &self,
        rollout: i64,
        node: &str,
        u: &NodeUpdate<'_>,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE rollout_nodes SET state = COALESCE(?3, state), step = COALESCE(?4, step),
                   version = COALESCE(?5, version), stopped_ms = COALESCE(?6, stopped_ms),
                   apply_ms = COALESCE(?7, apply_ms), error = ?8, updated_at = ?9
                 WHERE rollout_id = ?1 AND node = ?2",
                params![
                    rollout,
                    node,
                    u.state,
                    u.step,
                    u.version,
                    u.stopped_ms,
                    u.apply_ms,
                    u.error,
                    now()
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Ends, stops or reopens a rollout.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn finish_rollout(
        &self,
        rollout: i64,
        outcome: RolloutOutcome,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE rollouts SET outcome = ?2, error = ?3, finished_at = ?4 WHERE id = ?1",
                params![rollout, outcome, error, now()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The newest rollout.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn latest_rollout(&self) -> Result<Option<RolloutRecord>, StateError> {
        self.conn
            .query_row(
                "SELECT id, bundle, name, version, started_at, finished_at, outcome, error FROM rollouts ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok(RolloutRecord {
                        id: r.get(0)?,
                        bundle: r.get(1)?,
                        name: r.get(2)?,
                        version: r.get(3)?,
                        started_at: r.get(4)?,
                        finished_at: r.get(5)?,
                        outcome: r.get(6)?,
                        error: r.get(7)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The nodes of a rollout, in profile order.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn rollout_nodes(&self, rollout: i64) -> Result<Vec<RolloutNode>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT node, position, version, state, step, stopped_ms, apply_ms, error
                 FROM rollout_nodes WHERE rollout_id = ?1 ORDER BY position",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![rollout], |r| {
                Ok(RolloutNode {
                    node: r.get(0)?,
                    position: r.get(1)?,
                    version: r.get(2)?,
                    state: r.get(3)?,
                    step: r.get(4)?,
                    stopped_ms: r.get(5)?,
                    apply_ms: r.get(6)?,
                    error: r.get(7)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_records_its_nodes_and_their_states() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let nodes = vec!["n1".to_string(), "n2".to_string()];
        let id = state
            .begin_rollout("/b.airlock", "etcd-node", "1.1.0", &nodes)
            .unwrap();
        state
            .update_rollout_node(
                id,
                "n2",
                &NodeUpdate {
                    state: Some(NodeState::RolledBack),
                    error: Some("boom"),
                    ..NodeUpdate::default()
                },
            )
            .unwrap();
        state
            .finish_rollout(id, RolloutOutcome::Stopped, Some("boom"))
            .unwrap();
        state
            .add_rollout_nodes(id, &["n1".into(), "n2".into(), "n3".into()])
            .unwrap();
        let r = state.latest_rollout().unwrap().unwrap();
        assert!(r.outcome.is_open());
        let nodes = state.rollout_nodes(id).unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[1].state, NodeState::RolledBack);
        assert_eq!(nodes[2].state, NodeState::Pending);
        assert_eq!(
            serde_json::to_value(&nodes[1]).unwrap()["state"],
            "rolled-back"
        );
    }
}
