//! `airlock-apply apply --mode rolling`: a rolling upgrade of a Raft cluster
//! (docs/OPERATIONS.md, "Rolling upgrade"). One node at a time, followers
//! first, the leader last after leadership moved to an upgraded, caught-up
//! follower; before a node goes down every other node must be healthy, so
//! the cluster never has more than one member down; after a node's apply,
//! wait until it is healthy and caught up. While it catches up, the next
//! node's apply already runs with `--wait-for-go`: it verifies, stages and
//! pre-copies, then waits, and stops its service only when the checks
//! before its turn passed and the coordinator says go. On a failure the rollout stops:
//! the failed node rolled itself back, the others stay as they are, and
//! `resume` continues after the cause is fixed. Every node verifies the
//! bundle itself, and the coordinator reads each node only through the
//! typed protocol ([`crate::protocol`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_formats::{BundleError, DiscardSink, Manifest};

use super::profile::{ClusterSite, NodeProfile};
use super::transport::{wait_until, NodeError, NodeRun};
use crate::error::{exit, ApplyError, NodeOutcome};
use crate::interrupt::Interrupt;
use crate::lock::{lock_in, NodeLock};
use crate::protocol::{label, Event, RolloutReport, Status, PROTOCOL};
use crate::report::Reporter;
use crate::state::{NodeState, NodeUpdate, RolloutNode, RolloutOutcome, State, StateError};
use crate::transaction::step::Step;

/// Why a rolling upgrade stops or does not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A member fails its health probe.
    #[error("member {node} is unhealthy ({output}); a rolling upgrade takes one member down at a time and needs every other member healthy, so the cluster keeps its quorum")]
    Unhealthy {
        /// The member.
        node: String,
        /// The probe's last line.
        output: String,
    },
    /// No member says it leads.
    #[error("no member reports itself as leader")]
    NoLeader,
    /// More than one member says it leads.
    #[error("{} members report themselves as leader: {}", .0.len(), .0.join(", "))]
    ManyLeaders(Vec<String>),
    /// No upgraded follower can take the leadership.
    #[error("no upgraded follower has caught up with the leader to take over")]
    NoSuccessor,
    /// The leadership move failed.
    #[error("moving leadership from {from} to {to} failed: {output}")]
    MoveFailed {
        /// The leader.
        from: String,
        /// The follower.
        to: String,
        /// The probe's output.
        output: String,
    },
    /// The new leader did not show.
    #[error("{node} did not report itself leader within {secs}s of the move")]
    MoveUnconfirmed {
        /// The follower.
        node: String,
        /// `move_wait_secs`.
        secs: u64,
    },
    /// A node could not be reached or read.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A read-only command on a node failed.
    #[error("node {node}: `airlock-apply {command}` failed: {error}")]
    NodeCommand {
        /// The node.
        node: String,
        /// The command.
        command: &'static str,
        /// What it said.
        error: String,
    },
    /// A node refused the bundle.
    #[error("node {node} refused the bundle: {error}")]
    Refused {
        /// The node.
        node: String,
        /// What it said.
        error: String,
    },
    /// A node's apply failed and it rolled itself back.
    #[error("its apply failed and it rolled itself back: {error}")]
    RolledBack {
        /// What it said.
        error: String,
    },
    /// A node's apply did not begin.
    #[error("its apply did not begin (exit {code}), nothing on it changed: {error}")]
    NotBegun {
        /// Its exit code.
        code: i32,
        /// What it said.
        error: String,
    },
    /// A node's apply failed and it needs the operator.
    #[error("its apply failed (exit {code}) and it needs the operator: {error}")]
    NeedsOperator {
        /// Its exit code.
        code: i32,
        /// What it said.
        error: String,
    },
    /// A node runs the new version but did not come back in time.
    #[error("{node} runs {version} but was not healthy and caught up within {secs}s")]
    NotCaughtUp {
        /// The node.
        node: String,
        /// The version.
        version: String,
        /// `wait_secs`.
        secs: u64,
    },
    /// A node of the rollout left the profile.
    #[error("node {0} is in the rollout but no longer in the cluster profile; put it back")]
    Gone(String),
    /// An earlier rollout is not finished.
    #[error("rollout #{id} of {name} {version} stopped and is not finished; run `airlock-apply resume --site {site}` to continue it, or `airlock-apply rollout abandon --site {site}` to give it up")]
    Unfinished {
        /// Its id.
        id: i64,
        /// Bundle name.
        name: String,
        /// Its version.
        version: String,
        /// The cluster profile.
        site: String,
    },
    /// SIGINT or SIGTERM between two nodes.
    #[error(
        "interrupted by a signal between two nodes; every node is on one version or the other"
    )]
    Interrupted,
    /// The coordinator's state database failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// `node` passes the cluster's health probe.
fn healthy(site: &ClusterSite, node: &NodeProfile) -> Result<(), ClusterError> {
    let r = site.probe(&site.profile.cluster.healthy, node, None);
    if r.ok {
        Ok(())
    } else {
        Err(ClusterError::Unhealthy {
            node: node.name.clone(),
            output: r.output.lines().last().unwrap_or("").trim().to_owned(),
        })
    }
}

/// Runs `work` for every node at once, one thread each, and returns the
/// results in the nodes' order. A thread that fails is reported as that
/// node's error.
fn on_every_node<T: Send>(
    nodes: &[NodeProfile],
    work: impl Fn(&NodeProfile) -> Result<T, NodeError> + Sync,
) -> Vec<Result<T, NodeError>> {
    std::thread::scope(|scope| {
        let work = &work;
        let running: Vec<_> = nodes
            .iter()
            .map(|node| scope.spawn(move || work(node)))
            .collect();
        running
            .into_iter()
            .zip(nodes)
            .map(|(thread, node)| {
                thread.join().unwrap_or_else(|_| {
                    Err(NodeError::Wait {
                        node: node.name.clone(),
                        source: std::io::Error::other("the coordinator's thread for it failed"),
                    })
                })
            })
            .collect()
    })
}

/// `at node NAME`, for where a rollout stopped.
fn at_node(name: &str) -> String {
    format!("at node {name}")
}

/// The coordinator's lock, `STATE_DIR/rollout.lock`: one rollout at a time.
fn coordinator_lock(site: &ClusterSite) -> Result<NodeLock, ApplyError> {
    lock_in(&site.profile.paths.state_dir, "rollout.lock")
}

/// Checks the bundle on the coordinator: signatures (against the trust
/// update it carries, when the coordinator accepts one), threshold, expiry,
/// every payload byte, and that it allows mixed versions. Returns the
/// manifest and the carried trust update the coordinator accepted.
fn verify_here(
    site: &ClusterSite,
    bundle: &Path,
) -> Result<(Manifest, Option<crate::verify::CarriedTrust>), ApplyError> {
    let refused = |reason: String, help: &str| ApplyError::Refused {
        bundle: bundle.to_owned(),
        reason,
        help: help.into(),
    };
    let source = airlock_formats::BundleSource::open(bundle).map_err(|e| {
        refused(
            e.to_string(),
            "check the bundle's path; for a volume set, check it with `airlock-apply check-media`",
        )
    })?;
    let mut mixed_ok = true;
    let mut carried_trust = None;
    let header = source.read(
        |h| {
            // The coordinator's clock alone: each node checks against its
            // own recorded time too.
            let clock = crate::verify::Clock::read(None, site.profile.trust.clock_skew_secs)
                .map_err(|e| BundleError::Refused(e.to_string()))?;
            let (trust, trust_version, carried) =
                crate::verify::effective_trust(&site.trust, &site.trust_version, h, &clock)
                    .map_err(|refusal| BundleError::Refused(refusal.reason))?;
            crate::verify::check_trust_expiry(&trust_version, &clock, crate::VerifyOptions::default())
                .map_err(|refusal| BundleError::Refused(refusal.reason))?;
            trust.check(&h.manifest_bytes, &h.signatures)?;
            carried_trust = carried;
            crate::verify::check_time(&h.manifest, &clock, crate::VerifyOptions::default())
                .map_err(|refusal| BundleError::Refused(refusal.reason))?;
            mixed_ok = h.manifest.rolling_allowed;
            if !mixed_ok {
                return Err(BundleError::Refused(format!(
                    "{} {} does not allow mixed versions (rolling_allowed = false), so its members cannot run beside {0} members of another version",
                    h.manifest.name, h.manifest.version
                )));
            }
            Ok(())
        },
        Some(&mut DiscardSink),
    );
    match header {
        Ok(h) => Ok((h.manifest, carried_trust)),
        Err(e) if !mixed_ok => Err(refused(
            e.to_string(),
            "upgrade this release in a maintenance window instead: stop every member, run `airlock-apply apply` on each node's own site profile, then start them; or ask for a bundle that allows mixed versions",
        )),
        Err(e) => Err(refused(e.to_string(), "check the bundle and the keys in the cluster profile's [trust]; copy the bundle again if it is damaged")),
    }
}

/// A node's apply started before its turn with `--wait-for-go`: it
/// verifies, stages and pre-copies while the node before it catches up,
/// then waits; it stops nothing before the coordinator says go.
struct Ahead {
    node: NodeProfile,
    go: std::sync::mpsc::Sender<bool>,
    events: std::sync::mpsc::Receiver<Event>,
    run: std::thread::JoinHandle<Result<NodeRun, NodeError>>,
}

impl Ahead {
    /// Says go or stop, then relays the events until the apply ends;
    /// returns its run.
    fn release(self, go: bool, mut on_event: impl FnMut(&Event)) -> Result<NodeRun, NodeError> {
        // A node that ended already (it runs this version) no longer listens.
        let _ = self.go.send(go);
        for event in self.events.iter() {
            on_event(&event);
        }
        self.run.join().unwrap_or_else(|_| {
            Err(NodeError::Wait {
                node: self.node.name.clone(),
                source: std::io::Error::other("the coordinator's thread running its apply failed"),
            })
        })
    }
}

struct Rollout<'a> {
    site: &'a ClusterSite,
    interrupt: &'a Interrupt,
    state: State,
    reporter: &'a Reporter,
    id: i64,
    bundle: PathBuf,
    manifest: Manifest,
    /// Path of the bundle on each node, by node name.
    remote: Vec<(String, String)>,
}

impl Rollout<'_> {
    fn options(&self) -> &[String] {
        &self.site.profile.cluster.ssh_options
    }

    fn update(&self, node: &str, u: NodeUpdate<'_>) {
        let _ = self.state.update_rollout_node(self.id, node, &u);
    }

    /// `node` passes the cluster's health probe.
    fn healthy(&self, node: &NodeProfile) -> Result<(), ClusterError> {
        healthy(self.site, node)
    }

    /// The current leader; exactly one member must say so. The members are
    /// asked at once.
    fn leader(&self) -> Result<&NodeProfile, ClusterError> {
        let site = self.site;
        let answers: Vec<bool> = std::thread::scope(|scope| {
            let asking: Vec<_> = site
                .nodes()
                .iter()
                .map(|n| scope.spawn(move || site.probe(&site.profile.cluster.leader, n, None).ok))
                .collect();
            // A probe thread that failed counts as a member that did not say so.
            asking
                .into_iter()
                .map(|t| t.join().unwrap_or(false))
                .collect()
        });
        let leaders: Vec<&NodeProfile> = site
            .nodes()
            .iter()
            .zip(answers)
            .filter_map(|(n, leads)| leads.then_some(n))
            .collect();
        match leaders.as_slice() {
            [one] => Ok(one),
            [] => Err(ClusterError::NoLeader),
            many => Err(ClusterError::ManyLeaders(
                many.iter().map(|n| n.name.clone()).collect(),
            )),
        }
    }

    /// Every member other than `except` passes the health probe. The
    /// members are probed at once; the first failure in profile order is
    /// the error.
    fn quorum_check(&self, except: Option<&str>) -> Result<(), ClusterError> {
        let others: Vec<&NodeProfile> = self
            .site
            .nodes()
            .iter()
            .filter(|n| Some(n.name.as_str()) != except)
            .collect();
        let site = self.site;
        std::thread::scope(|scope| {
            let probing: Vec<_> = others
                .iter()
                .map(|n| scope.spawn(move || healthy(site, n)))
                .collect();
            // Every probe is joined before the first failure is returned.
            let results: Vec<Result<(), ClusterError>> = probing
                .into_iter()
                .zip(&others)
                .map(|(t, n)| {
                    t.join().unwrap_or_else(|_| {
                        Err(ClusterError::Unhealthy {
                            node: n.name.clone(),
                            output: "the coordinator's probe thread failed".into(),
                        })
                    })
                })
                .collect();
            results.into_iter().collect::<Result<(), _>>()
        })
    }

    fn remote_path(&self, node: &str) -> String {
        self.remote
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    }

    /// Runs a read-only `airlock-apply` command on `node`; it must succeed.
    fn ask(
        &self,
        node: &NodeProfile,
        command: &'static str,
        args: &[&str],
    ) -> Result<NodeRun, ClusterError> {
        let run = node.airlock_apply(args, self.options(), |_| {})?;
        if run.code != 0 {
            return Err(ClusterError::NodeCommand {
                node: node.name.clone(),
                command,
                error: run.failure(),
            });
        }
        Ok(run)
    }

    /// The version the node's own state says it runs, and whether it has an
    /// interrupted apply. This is the first contact with each node: a node
    /// speaking another protocol version is refused here.
    fn node_status(&self, node: &NodeProfile) -> Result<(Option<String>, bool), ClusterError> {
        let run = self.ask(node, "status", &["status", "--site", &node.site])?;
        let status = run.status.ok_or_else(|| ClusterError::NodeCommand {
            node: node.name.clone(),
            command: "status",
            error: "it printed no status report".into(),
        })?;
        Ok((
            status.installed.map(|i| i.version),
            status.interrupted_apply.is_some(),
        ))
    }

    /// Copies the bundle to every node and has each verify it, before any
    /// node stops. The copies run at once, one per node, and so do the
    /// verifications; a failure is reported for the first node, in profile
    /// order, that had one.
    fn distribute(&mut self) -> Result<(), ClusterError> {
        let version = self.manifest.version.to_string();
        let nodes = self.site.nodes();
        for node in nodes {
            self.reporter.event("copy", Status::Start, &node.name);
        }
        let options = &self.site.profile.cluster.ssh_options;
        let bundle = self.bundle.clone();
        let copies = on_every_node(nodes, |node| node.copy_bundle(&bundle, options));
        let mut to_verify = Vec::new();
        for (node, copied) in nodes.iter().zip(copies) {
            let remote = copied?;
            self.remote.push((node.name.clone(), remote.clone()));
            let (mut installed, interrupted) = self.node_status(node)?;
            if interrupted {
                self.reporter.event(
                    "resume node",
                    Status::Start,
                    &format!("{}: an earlier apply was interrupted", node.name),
                );
                let run =
                    node.airlock_apply(&["resume", "--site", &node.site], self.options(), |_| {})?;
                if !matches!(u8::try_from(run.code), Ok(exit::OK | exit::ROLLED_BACK)) {
                    return Err(ClusterError::NodeCommand {
                        node: node.name.clone(),
                        command: "resume",
                        error: run.failure(),
                    });
                }
                // The resume may have completed that apply: read the version again.
                installed = self.node_status(node)?.0;
            }
            if installed.as_deref() == Some(version.as_str()) {
                self.update(
                    node.name.as_str(),
                    NodeUpdate {
                        state: Some(NodeState::Upgraded),
                        version: Some(&version),
                        step: Some("already installed"),
                        ..NodeUpdate::default()
                    },
                );
                self.reporter.event(
                    "verify",
                    Status::Ok,
                    &format!("{}: already runs {version}", node.name),
                );
                continue;
            }
            self.reporter.event(
                "verify",
                Status::Start,
                &format!("{}: the node checks the bundle itself", node.name),
            );
            to_verify.push((node.clone(), remote, installed));
        }
        let profiles: Vec<NodeProfile> = to_verify.iter().map(|(n, _, _)| n.clone()).collect();
        let remote = &self.remote;
        let runs = on_every_node(&profiles, |node| {
            let path = remote
                .iter()
                .find(|(n, _)| *n == node.name)
                .map(|(_, p)| p.as_str())
                .unwrap_or_default();
            node.airlock_apply(&["verify", path, "--site", &node.site], options, |_| {})
        });
        for ((node, _, installed), run) in to_verify.iter().zip(runs) {
            let run = run?;
            if run.code != 0 {
                let error = ClusterError::Refused {
                    node: node.name.clone(),
                    error: run.failure(),
                };
                self.update(
                    &node.name,
                    NodeUpdate {
                        state: Some(NodeState::Failed),
                        error: Some(&error.to_string()),
                        step: Some("verify"),
                        ..NodeUpdate::default()
                    },
                );
                return Err(error);
            }
            self.update(
                &node.name,
                NodeUpdate {
                    state: Some(NodeState::Verified),
                    version: installed.as_deref(),
                    step: Some("verified"),
                    ..NodeUpdate::default()
                },
            );
            self.reporter.event(
                "verify",
                Status::Ok,
                &format!("{}: bundle verified by the node", node.name),
            );
        }
        Ok(())
    }

    fn pending(&self) -> Result<Vec<RolloutNode>, StateError> {
        Ok(self
            .state
            .rollout_nodes(self.id)?
            .into_iter()
            .filter(|n| n.state != NodeState::Upgraded)
            .collect())
    }

    fn node(&self, name: &str) -> Option<&NodeProfile> {
        self.site.nodes().iter().find(|n| n.name == name)
    }

    /// Moves leadership from `leader` to an upgraded follower that caught up, and confirms it.
    fn move_leadership(&self, leader: &NodeProfile) -> Result<(), ClusterError> {
        let upgraded: Vec<String> = self
            .state
            .rollout_nodes(self.id)?
            .into_iter()
            .filter(|n| n.state == NodeState::Upgraded && n.node != leader.name)
            .map(|n| n.node)
            .collect();
        let cluster = &self.site.profile.cluster;
        let target = upgraded
            .iter()
            .filter_map(|name| self.node(name))
            .find(|n| self.site.probe(&cluster.caught_up, n, Some(leader)).ok)
            .ok_or(ClusterError::NoSuccessor)?;
        self.reporter.event(
            "move leader",
            Status::Start,
            &format!("{} -> {}", leader.name, target.name),
        );
        let moved = self.site.probe(&cluster.move_leader, target, Some(leader));
        if !moved.ok {
            return Err(ClusterError::MoveFailed {
                from: leader.name.clone(),
                to: target.name.clone(),
                output: moved.output,
            });
        }
        let confirmed = wait_until(Duration::from_secs(cluster.move_wait_secs), || {
            self.site.probe(&cluster.leader, target, None).ok
        });
        if !confirmed {
            return Err(ClusterError::MoveUnconfirmed {
                node: target.name.clone(),
                secs: cluster.move_wait_secs,
            });
        }
        self.reporter.event(
            "move leader",
            Status::Ok,
            &format!("{} is the leader", target.name),
        );
        Ok(())
    }

    /// Records that the rollout stopped `at` (a node, or before any) and
    /// returns the error to report. A node of another protocol version is
    /// reported as such: nothing changed, and no other airlock-apply may be
    /// trusted to act on the coordinator's word.
    fn stop(&self, at: &str, reason: ClusterError, node_outcome: NodeOutcome) -> ApplyError {
        let text = reason.to_string();
        let _ = self
            .state
            .finish_rollout(self.id, RolloutOutcome::Stopped, Some(&text));
        self.reporter.event("rollout", Status::Failed, &text);
        if let ClusterError::Node(NodeError::Protocol { node, found }) = reason {
            return ApplyError::Protocol {
                node,
                found,
                ours: PROTOCOL,
            };
        }
        ApplyError::RolloutStopped {
            version: self.manifest.version.to_string(),
            node: at.to_owned(),
            reason: text,
            node_outcome,
        }
    }

    /// Relays one of a node's apply events and notes the stop and healthy times.
    fn relay(&self, name: &str, e: &Event, stop_at: &mut Option<u64>, up_at: &mut Option<u64>) {
        if matches!(e.apply_step, Some(Step::Stop { .. })) && e.status == Status::Start {
            *stop_at = Some(e.elapsed_ms);
        }
        let back = matches!(e.apply_step, Some(Step::Health { .. })) && e.status == Status::Ok;
        let rolled_back = e.apply_step.is_none()
            && e.undo.is_none()
            && e.step == label::ROLLBACK
            && e.status != Status::Start;
        if back || rolled_back {
            *up_at = Some(e.elapsed_ms);
        }
        // The step column shows the node's steps and the undo actions that
        // change it, not housekeeping such as removing the staging folder.
        let shown = e.undo.as_ref().is_none_or(|u| u.changes_node());
        if shown && (matches!(e.status, Status::Start | Status::Failed) || back) {
            self.reporter
                .event(&format!("{name}: {}", e.step), e.status, &e.detail);
            self.update(
                name,
                NodeUpdate {
                    step: Some(&e.step),
                    ..NodeUpdate::default()
                },
            );
        }
    }

    /// Starts `node`'s apply with `--wait-for-go` on a thread of its own;
    /// `None` when no thread can start (the node then runs at its turn).
    fn start_ahead(&self, node: &NodeProfile) -> Option<Ahead> {
        let (go, gate) = std::sync::mpsc::channel();
        let (sent, events) = std::sync::mpsc::channel();
        let args = [
            "apply".to_owned(),
            self.remote_path(&node.name),
            "--site".to_owned(),
            node.site.clone(),
            "--wait-for-go".to_owned(),
        ];
        let options = self.options().to_vec();
        let profile = node.clone();
        let run = std::thread::Builder::new()
            .name(format!("ahead {}", node.name))
            .spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                profile.airlock_apply_gated(&args, &options, Some(gate), |e| {
                    let _ = sent.send(e.clone());
                })
            })
            .ok()?;
        self.reporter.event(
            "prepare",
            Status::Start,
            &format!(
                "{}: verify, stage and pre-copy now; its service stops at its turn",
                node.name
            ),
        );
        Some(Ahead {
            node: node.clone(),
            go,
            events,
            run,
        })
    }

    /// Tells a node started ahead that its turn does not come now: its
    /// apply ends before the stop and leaves it unchanged. An apply that
    /// ended otherwise is recorded on the node's row.
    fn cancel(&self, ahead: Ahead) {
        let name = ahead.node.name.clone();
        let run = ahead.release(false, |_| {});
        let unchanged = |code: i32| {
            u8::try_from(code).is_ok_and(|c| {
                // USAGE: an airlock-apply without --wait-for-go refused
                // the command line.
                [
                    exit::OK,
                    exit::FAILED,
                    exit::USAGE,
                    exit::REFUSED,
                    exit::BUSY,
                    exit::INTERRUPTED,
                ]
                .contains(&c)
            })
        };
        let left_unchanged = match &run {
            Ok(run) => unchanged(run.code),
            // Not started at all: nothing on the node changed.
            Err(e) => matches!(e, NodeError::Spawn { .. }),
        };
        match run {
            _ if left_unchanged => self.reporter.event(
                "prepare",
                Status::Info,
                &format!("{name}: not its turn now; its apply ended before the stop, the node is unchanged"),
            ),
            other => {
                let error = match other {
                    Ok(run) => run.failure(),
                    Err(e) => e.to_string(),
                };
                self.update(
                    &name,
                    NodeUpdate {
                        state: Some(NodeState::Failed),
                        error: Some(&error),
                        ..NodeUpdate::default()
                    },
                );
                self.reporter.event(
                    "prepare",
                    Status::Failed,
                    &format!("{name}: its apply, started ahead, ended with: {error}; check the node with `airlock-apply status` there"),
                );
            }
        }
    }

    /// Upgrades one node: its own single-node apply, then healthy and caught up.
    /// `ahead` is its apply started ahead, if any; once the node is healthy,
    /// the apply of `next` starts ahead into `slot`.
    fn upgrade(
        &self,
        node: &NodeProfile,
        ahead: Option<Ahead>,
        next: Option<&NodeProfile>,
        slot: &mut Option<Ahead>,
    ) -> Result<(), ApplyError> {
        let version = self.manifest.version.to_string();
        let remote = self.remote_path(&node.name);
        self.update(
            &node.name,
            NodeUpdate {
                state: Some(NodeState::Upgrading),
                step: Some("apply"),
                ..NodeUpdate::default()
            },
        );
        self.reporter.event(
            "node",
            Status::Start,
            &format!("{}: apply {version}", node.name),
        );
        let started = Instant::now();
        let mut stop_at: Option<u64> = None;
        let mut up_at: Option<u64> = None;
        let mut on_event = |e: &Event| {
            self.relay(&node.name, e, &mut stop_at, &mut up_at);
            let back = matches!(e.apply_step, Some(Step::Health { .. })) && e.status == Status::Ok;
            if let (true, None, Some(next)) = (back, slot.as_ref(), next) {
                *slot = self.start_ahead(next);
            }
        };
        let args = ["apply", &remote, "--site", &node.site];
        let run = match ahead {
            Some(ahead) => match ahead.release(true, &mut on_event) {
                // An airlock-apply without --wait-for-go: run it plainly.
                Ok(run) if run.code == i32::from(exit::USAGE) => {
                    node.airlock_apply(&args, self.options(), &mut on_event)
                }
                other => other,
            },
            None => node.airlock_apply(&args, self.options(), &mut on_event),
        };
        let run = run.map_err(|e| {
            // Not started: nothing on the node changed. Its output
            // unreadable halfway: where it stands is unknown.
            let outcome = if matches!(e, NodeError::Spawn { .. }) {
                NodeOutcome::Unchanged
            } else {
                NodeOutcome::NeedsOperator
            };
            self.stop(&at_node(&node.name), e.into(), outcome)
        })?;
        let stopped_ms = match (stop_at, up_at) {
            (Some(a), Some(b)) if b >= a => i64::try_from(b - a).ok(),
            _ => None,
        };
        let apply_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        if run.code != 0 {
            let error = run.failure();
            let (outcome, state, reason) = match u8::try_from(run.code) {
                Ok(exit::ROLLED_BACK) => (
                    NodeOutcome::RolledBack,
                    NodeState::RolledBack,
                    ClusterError::RolledBack {
                        error: error.clone(),
                    },
                ),
                Ok(exit::FAILED | exit::REFUSED | exit::BUSY | exit::INTERRUPTED) => (
                    NodeOutcome::Unchanged,
                    NodeState::Failed,
                    ClusterError::NotBegun {
                        code: run.code,
                        error: error.clone(),
                    },
                ),
                _ => (
                    NodeOutcome::NeedsOperator,
                    NodeState::Failed,
                    ClusterError::NeedsOperator {
                        code: run.code,
                        error: error.clone(),
                    },
                ),
            };
            self.update(
                &node.name,
                NodeUpdate {
                    state: Some(state),
                    stopped_ms,
                    apply_ms: Some(apply_ms),
                    error: Some(&error),
                    ..NodeUpdate::default()
                },
            );
            return Err(self.stop(&at_node(&node.name), reason, outcome));
        }
        self.update(
            &node.name,
            NodeUpdate {
                step: Some("wait healthy and caught up"),
                stopped_ms,
                apply_ms: Some(apply_ms),
                ..NodeUpdate::default()
            },
        );
        let cluster = &self.site.profile.cluster;
        let ready = wait_until(Duration::from_secs(cluster.wait_secs), || {
            if self.healthy(node).is_err() {
                return false;
            }
            match self.leader() {
                Ok(leader) if leader.name == node.name => true,
                Ok(leader) => self.site.probe(&cluster.caught_up, node, Some(leader)).ok,
                Err(_) => false,
            }
        });
        if !ready {
            let reason = ClusterError::NotCaughtUp {
                node: node.name.clone(),
                version: version.clone(),
                secs: cluster.wait_secs,
            };
            self.update(
                &node.name,
                NodeUpdate {
                    state: Some(NodeState::Failed),
                    version: Some(&version),
                    error: Some(&reason.to_string()),
                    ..NodeUpdate::default()
                },
            );
            return Err(self.stop(&at_node(&node.name), reason, NodeOutcome::NeedsOperator));
        }
        self.update(
            &node.name,
            NodeUpdate {
                state: Some(NodeState::Upgraded),
                version: Some(&version),
                step: Some("done"),
                ..NodeUpdate::default()
            },
        );
        let secs = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0)).as_secs_f64();
        self.reporter.event(
            "node",
            Status::Ok,
            &format!(
                "{}: runs {version}, healthy and caught up; service down {}, apply {:.1}s",
                node.name,
                stopped_ms.map_or_else(|| "?".into(), |ms| format!("{:.1}s", secs(ms))),
                secs(apply_ms)
            ),
        );
        Ok(())
    }

    fn run(&mut self) -> Result<(), ApplyError> {
        let unchanged = NodeOutcome::Unchanged;
        if let Err(e) = self.distribute() {
            return Err(self.stop("before any node stopped", e, unchanged));
        }
        let mut ahead = None;
        let rolled = self.roll(&mut ahead);
        // A node started ahead whose turn did not come.
        if let Some(ahead) = ahead.take() {
            self.cancel(ahead);
        }
        rolled?;
        self.state
            .finish_rollout(self.id, RolloutOutcome::Ok, None)?;
        self.reporter.event(
            "rollout",
            Status::Ok,
            &format!("every member runs {}", self.manifest.version),
        );
        Ok(())
    }

    /// Upgrades the pending nodes one at a time; `ahead` holds the apply
    /// started ahead for the next one, if any.
    fn roll(&self, ahead: &mut Option<Ahead>) -> Result<(), ApplyError> {
        let unchanged = NodeOutcome::Unchanged;
        loop {
            let pending = self
                .pending()
                .map_err(|e| self.stop("before the next node", e.into(), unchanged))?;
            let Some(first) = pending.first() else {
                break;
            };
            if self.interrupt.requested() {
                return Err(self.stop(&at_node(&first.node), ClusterError::Interrupted, unchanged));
            }
            let leader = self
                .leader()
                .map_err(|reason| {
                    self.stop(
                        "because the cluster has no single leader",
                        reason,
                        unchanged,
                    )
                })?
                .clone();
            // Followers first, in profile order; the leader only when it is the last one left.
            let next = pending
                .iter()
                .find(|n| n.node != leader.name)
                .unwrap_or(first)
                .node
                .clone();
            let node = self.node(&next).cloned().ok_or_else(|| {
                self.stop(&at_node(&next), ClusterError::Gone(next.clone()), unchanged)
            })?;
            // The apply started ahead is this node's, or no longer fits.
            let prepared = match ahead.take() {
                Some(a) if a.node.name == node.name => Some(a),
                Some(a) => {
                    self.cancel(a);
                    None
                }
                None => None,
            };
            *ahead = prepared;
            // Quorum first: leadership is never moved in a cluster that
            // could not spare this node.
            self.quorum_check(Some(&node.name))
                .map_err(|reason| self.stop(&at_node(&node.name), reason, unchanged))?;
            if node.name == leader.name {
                self.move_leadership(&leader)
                    .map_err(|reason| self.stop(&at_node(&node.name), reason, unchanged))?;
            }
            // The node after this one, as things stand: another follower,
            // else the leader.
            let after = pending
                .iter()
                .filter(|n| n.node != node.name)
                .find(|n| n.node != leader.name)
                .or_else(|| pending.iter().find(|n| n.node != node.name))
                .and_then(|n| self.node(&n.node))
                .cloned();
            let prepared = ahead.take();
            self.upgrade(&node, prepared, after.as_ref(), ahead)?;
        }
        Ok(())
    }
}

/// Runs a rolling upgrade of `bundle` across the cluster; with `bundle`
/// `None`, continues the stopped rollout instead (re-checking the bundle,
/// the leader and quorum first).
///
/// # Errors
/// [`ApplyError::Refused`] when the bundle is refused (nothing changed);
/// [`ApplyError::ClusterCheck`] when a member is unhealthy or there is no
/// single leader at the start (nothing changed); [`ApplyError::Protocol`]
/// when a node runs another airlock version; [`ApplyError::RolloutStopped`]
/// when a node failed or a check between nodes did.
pub fn rollout(
    site: &ClusterSite,
    bundle: Option<&Path>,
    reporter: &Reporter,
    interrupt: &Interrupt,
) -> Result<(), ApplyError> {
    // Each node's steps are relayed as they begin: a person sees where
    // every node is.
    reporter.show_start_lines();
    let _lock = coordinator_lock(site)?;
    let state = State::open(&site.profile.paths.state_dir)?;
    crate::site::check_trust_current(&state, &site.path, &site.trust_version)?;
    let latest = state.latest_rollout()?;
    let (id, bundle) = match (bundle, latest) {
        (None, Some(r)) if r.outcome.is_open() => {
            reporter.event(
                "resume",
                Status::Start,
                &format!("rollout #{} of {} {}", r.id, r.name, r.version),
            );
            (Some(r.id), PathBuf::from(r.bundle))
        }
        (None, _) => {
            reporter.event("resume", Status::Ok, "no stopped rollout: nothing to do");
            return Ok(());
        }
        (Some(_), Some(r)) if r.outcome.is_open() => {
            return Err(ApplyError::ClusterCheck {
                step: "rollout".into(),
                cause: Box::new(ClusterError::Unfinished {
                    id: r.id,
                    name: r.name,
                    version: r.version,
                    site: site.path.display().to_string(),
                }),
            })
        }
        (Some(b), _) => (None, b.to_owned()),
    };
    reporter.event("verify", Status::Start, &bundle.display().to_string());
    let (manifest, carried_trust) = verify_here(site, &bundle)?;
    // The coordinator keeps the trust update the bundle carries, as each
    // node does when it applies the bundle (docs/SITE.md, "Trust updates").
    if let Some(carried) = &carried_trust {
        let line = crate::commands::trust::install_carried(&state, &bundle, carried)?;
        reporter.event("trust", Status::Ok, &line);
    }
    reporter.event(
        "verify",
        Status::Ok,
        &format!(
            "{} {} allows mixed versions",
            manifest.name, manifest.version
        ),
    );
    let mut rollout = Rollout {
        site,
        interrupt,
        state,
        reporter,
        id: id.unwrap_or(0),
        bundle: bundle.clone(),
        manifest,
        remote: Vec::new(),
    };
    let check = |step: &str| {
        let step = step.to_owned();
        move |cause: ClusterError| ApplyError::ClusterCheck {
            step,
            cause: Box::new(cause),
        }
    };
    // Quorum first: refuse to start with a member down.
    rollout
        .quorum_check(None)
        .map_err(check("cluster health"))?;
    let leader = rollout.leader().map_err(check("finding the leader"))?;
    reporter.event(
        "cluster",
        Status::Ok,
        &format!("every member is healthy; {} is the leader", leader.name),
    );
    let names: Vec<String> = site.nodes().iter().map(|n| n.name.clone()).collect();
    if let Some(id) = id {
        // Checks passed: the stopped rollout runs again; nodes added to the
        // profile since join it.
        rollout
            .state
            .finish_rollout(id, RolloutOutcome::Running, None)?;
        rollout.state.add_rollout_nodes(id, &names)?;
    } else {
        rollout.id = rollout.state.begin_rollout(
            &std::path::absolute(&bundle)
                .unwrap_or(bundle.clone())
                .display()
                .to_string(),
            &rollout.manifest.name,
            &rollout.manifest.version.to_string(),
            &names,
        )?;
    }
    let result = rollout.run();
    let table = render_table(&rollout.state, rollout.id).unwrap_or_default();
    crate::report::eprint_line(table.trim_end());
    result
}

/// The rollout's nodes as a table: node, version, state, step, down time.
///
/// # Errors
/// [`ApplyError::State`].
pub fn render_table(state: &State, rollout: i64) -> Result<String, ApplyError> {
    Ok(node_table(&state.rollout_nodes(rollout)?))
}

fn node_table(nodes: &[RolloutNode]) -> String {
    let mut out = format!(
        "{:<10} {:<10} {:<12} {:<28} {:>9}  {}\n",
        "node", "version", "state", "step", "down", "error"
    );
    for n in nodes {
        let down = n.stopped_ms.map_or_else(
            || "-".into(),
            |ms| {
                format!(
                    "{:.1}s",
                    Duration::from_millis(u64::try_from(ms).unwrap_or(0)).as_secs_f64()
                )
            },
        );
        out.push_str(&format!(
            "{:<10} {:<10} {:<12} {:<28} {:>9}  {}\n",
            n.node,
            n.version.as_deref().unwrap_or("?"),
            n.state,
            n.step,
            down,
            n.error.as_deref().unwrap_or("")
        ));
    }
    out
}

/// The newest rollout and its nodes, for `rollout status`.
///
/// # Errors
/// [`ApplyError::State`].
pub fn status(site: &ClusterSite) -> Result<RolloutReport, ApplyError> {
    let mut report = RolloutReport {
        protocol: PROTOCOL,
        rollout: None,
        started_at_rfc3339: None,
        finished_at_rfc3339: None,
        nodes: Vec::new(),
    };
    let Some(state) = State::open_existing(&site.profile.paths.state_dir)? else {
        return Ok(report);
    };
    if let Some(r) = state.latest_rollout()? {
        report.nodes = state.rollout_nodes(r.id)?;
        report.started_at_rfc3339 = Some(airlock_formats::time::rfc3339_signed(r.started_at));
        report.finished_at_rfc3339 = r.finished_at.map(airlock_formats::time::rfc3339_signed);
        report.rollout = Some(r);
    }
    Ok(report)
}

impl RolloutReport {
    /// The report as text for a person.
    pub fn render(&self, state_dir: &Path) -> String {
        let Some(r) = &self.rollout else {
            return format!("no rolling upgrade recorded in `{}`\n", state_dir.display());
        };
        let mut out = format!(
            "rollout #{} of {} {}: {}{}\n",
            r.id,
            r.name,
            r.version,
            r.outcome,
            r.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        out.push_str(&format!(
            "started {}{}\n",
            airlock_formats::time::rfc3339_signed(r.started_at),
            r.finished_at
                .map(|t| format!(", ended {}", airlock_formats::time::rfc3339_signed(t)))
                .unwrap_or_default()
        ));
        out.push_str(&node_table(&self.nodes));
        out
    }
}

/// Gives up the stopped rollout: its record is closed as `abandoned` and the
/// nodes stay as they are (each on one version or the other). Returns the
/// rollout's id, or `None` when there was none to give up.
///
/// # Errors
/// [`ApplyError::Busy`] while a rollout runs; [`ApplyError::State`].
pub fn abandon(site: &ClusterSite, reporter: &Reporter) -> Result<Option<i64>, ApplyError> {
    let _lock = coordinator_lock(site)?;
    let state = State::open(&site.profile.paths.state_dir)?;
    match state.latest_rollout()? {
        Some(r) if r.outcome.is_open() => {
            state.finish_rollout(r.id, RolloutOutcome::Abandoned, r.error.as_deref())?;
            reporter.event(
                "rollout",
                Status::Ok,
                &format!(
                    "rollout #{} of {} {} abandoned; the nodes stay as they are",
                    r.id, r.name, r.version
                ),
            );
            Ok(Some(r.id))
        }
        _ => {
            reporter.event("rollout", Status::Info, "no stopped rollout to abandon");
            Ok(None)
        }
    }
}
