//! `airlock-apply apply --mode rolling`: a rolling upgrade of a Raft cluster
//! (DESIGN.md, "Rolling upgrade"). One node at a time, followers first, the
//! leader last after leadership moved to an upgraded, caught-up follower;
//! before a node goes down every other node must be healthy, so the cluster
//! never has more than one member down; after a node's apply, wait until it is
//! healthy and caught up. On a failure the rollout stops: the failed node
//! rolled itself back, the others stay as they are, and `resume` continues
//! after the cause is fixed. Every node verifies the bundle itself.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_formats::{read_bundle, BundleError, DiscardSink, Manifest};

use crate::cluster::{wait_until, ClusterSite, NodeProfile};
use crate::error::{ApplyError, NodeOutcome};
use crate::interrupt::Interrupt;
use crate::lock::{lock_in, NodeLock};
use crate::report::Reporter;
use crate::state::{NodeUpdate, RolloutNode, RolloutRecord, State};

/// `at node NAME`, for where a rollout stopped.
fn at_node(name: &str) -> String {
    format!("at node {name}")
}

/// Node states in the rollout record.
mod node_state {
    pub const VERIFIED: &str = "verified";
    pub const UPGRADING: &str = "upgrading";
    pub const UPGRADED: &str = "upgraded";
    pub const ROLLED_BACK: &str = "rolled-back";
    pub const FAILED: &str = "failed";
}

/// The coordinator's lock, `STATE_DIR/rollout.lock`: one rollout at a time.
fn coordinator_lock(site: &ClusterSite) -> Result<NodeLock, ApplyError> {
    lock_in(&site.profile.paths.state_dir, "rollout.lock")
}

/// Checks the bundle on the coordinator: signatures, threshold, expiry, every
/// payload byte, and that it allows mixed versions.
fn verify_here(site: &ClusterSite, bundle: &Path) -> Result<Manifest, ApplyError> {
    let refused = |reason: String, help: &str| ApplyError::Refused {
        bundle: bundle.to_owned(),
        reason,
        help: help.into(),
    };
    let file = File::open(bundle).map_err(ApplyError::io(format!(
        "opening bundle `{}`",
        bundle.display()
    )))?;
    let mut mixed_ok = true;
    let header = read_bundle(
        BufReader::with_capacity(1 << 20, file),
        |h| {
            site.trust.check(&h.manifest_bytes, &h.signatures)?;
            crate::verify::check_expiry(&h.manifest).map_err(BundleError::Refused)?;
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
        Ok(h) => Ok(h.manifest),
        Err(e) if !mixed_ok => Err(refused(
            e.to_string(),
            "upgrade this release in a maintenance window instead: stop every member, run `airlock-apply apply` on each node's own site profile, then start them; or ask for a bundle that allows mixed versions",
        )),
        Err(e) => Err(refused(e.to_string(), "check the bundle and the keys in the cluster profile's [trust]; copy the bundle again if it is damaged")),
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

    fn healthy(&self, node: &NodeProfile) -> Result<(), String> {
        let r = self
            .site
            .probe(&self.site.profile.cluster.healthy, node, None);
        if r.ok {
            Ok(())
        } else {
            Err(r.output)
        }
    }

    /// The current leader; exactly one member must say so.
    fn leader(&self) -> Result<&NodeProfile, String> {
        let leaders: Vec<&NodeProfile> = self
            .site
            .nodes()
            .iter()
            .filter(|n| {
                self.site
                    .probe(&self.site.profile.cluster.leader, n, None)
                    .ok
            })
            .collect();
        match leaders.as_slice() {
            [one] => Ok(one),
            [] => Err("no member reports itself as leader".into()),
            many => Err(format!(
                "{} members report themselves as leader: {}",
                many.len(),
                many.iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Every member other than `except` passes the health probe.
    fn quorum_check(&self, except: Option<&str>) -> Result<(), String> {
        for node in self.site.nodes() {
            if Some(node.name.as_str()) == except {
                continue;
            }
            self.healthy(node).map_err(|out| {
                format!(
                    "member {} is unhealthy ({}); a rolling upgrade takes one member down at a time and needs every other member healthy, so the cluster keeps its quorum",
                    node.name,
                    out.lines().last().unwrap_or("").trim()
                )
            })?;
        }
        Ok(())
    }

    fn remote_path(&self, node: &str) -> String {
        self.remote
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    }

    /// The version the node's own state says it runs, and whether it has an interrupted apply.
    fn node_status(&self, node: &NodeProfile) -> Result<(Option<String>, bool), String> {
        let run = node.airlock_apply(&["status", "--site", &node.site], self.options(), |_| {})?;
        let status = run.events.last().cloned().unwrap_or_default();
        if run.code != 0 {
            return Err(format!(
                "node {}: `airlock-apply status` failed: {}",
                node.name,
                run.stderr.trim()
            ));
        }
        Ok((
            status["installed"]["version"].as_str().map(str::to_owned),
            !status["interrupted_apply"].is_null(),
        ))
    }

    /// Copies the bundle to every node and has each verify it, before any node stops.
    fn distribute(&mut self) -> Result<(), ApplyError> {
        let version = self.manifest.version.to_string();
        for node in self.site.nodes() {
            self.reporter.event("copy", "start", &node.name);
            let remote = node
                .copy_bundle(&self.bundle, self.options())
                .map_err(|reason| ApplyError::Preflight {
                    step: format!("copying the bundle to {}", node.name),
                    reason,
                })?;
            self.remote.push((node.name.clone(), remote.clone()));
            let status_err = |reason| ApplyError::Preflight {
                step: "reading node status".into(),
                reason,
            };
            let (mut installed, interrupted) = self.node_status(node).map_err(status_err)?;
            if interrupted {
                self.reporter.event(
                    "resume node",
                    "start",
                    &format!("{}: an earlier apply was interrupted", node.name),
                );
                let run = node
                    .airlock_apply(&["resume", "--site", &node.site], self.options(), |_| {})
                    .map_err(|reason| ApplyError::Preflight {
                        step: "resume".into(),
                        reason,
                    })?;
                if !matches!(run.code, 0 | 4) {
                    return Err(ApplyError::Preflight {
                        step: format!("resuming node {}", node.name),
                        reason: run.stderr.trim().to_owned(),
                    });
                }
                // The resume may have completed that apply: read the version again.
                installed = self.node_status(node).map_err(status_err)?.0;
            }
            if installed.as_deref() == Some(version.as_str()) {
                self.update(
                    node.name.as_str(),
                    NodeUpdate {
                        state: Some(node_state::UPGRADED),
                        version: Some(&version),
                        step: Some("already installed"),
                        ..Default::default()
                    },
                );
                self.reporter.event(
                    "verify",
                    "ok",
                    &format!("{}: already runs {version}", node.name),
                );
                continue;
            }
            self.reporter.event(
                "verify",
                "start",
                &format!("{}: the node checks the bundle itself", node.name),
            );
            let run = node
                .airlock_apply(
                    &["verify", &remote, "--site", &node.site],
                    self.options(),
                    |_| {},
                )
                .map_err(|reason| ApplyError::Preflight {
                    step: "verify".into(),
                    reason,
                })?;
            if run.code != 0 {
                let reason = format!(
                    "node {} refused the bundle: {}",
                    node.name,
                    run.stderr.trim()
                );
                self.update(
                    &node.name,
                    NodeUpdate {
                        state: Some(node_state::FAILED),
                        error: Some(&reason),
                        step: Some("verify"),
                        ..Default::default()
                    },
                );
                return Err(ApplyError::Preflight {
                    step: format!("verifying on {}", node.name),
                    reason,
                });
            }
            self.update(
                &node.name,
                NodeUpdate {
                    state: Some(node_state::VERIFIED),
                    version: installed.as_deref(),
                    step: Some("verified"),
                    ..Default::default()
                },
            );
            self.reporter.event(
                "verify",
                "ok",
                &format!("{}: bundle verified by the node", node.name),
            );
        }
        Ok(())
    }

    fn pending(&self) -> Result<Vec<RolloutNode>, ApplyError> {
        Ok(self
            .state
            .rollout_nodes(self.id)?
            .into_iter()
            .filter(|n| n.state != node_state::UPGRADED)
            .collect())
    }

    fn node(&self, name: &str) -> Option<&NodeProfile> {
        self.site.nodes().iter().find(|n| n.name == name)
    }

    /// Moves leadership from `leader` to an upgraded follower that caught up, and confirms it.
    fn move_leadership(&self, leader: &NodeProfile) -> Result<(), String> {
        let upgraded: Vec<String> = self
            .state
            .rollout_nodes(self.id)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|n| n.state == node_state::UPGRADED && n.node != leader.name)
            .map(|n| n.node)
            .collect();
        let cluster = &self.site.profile.cluster;
        let target = upgraded
            .iter()
            .filter_map(|name| self.node(name))
            .find(|n| self.site.probe(&cluster.caught_up, n, Some(leader)).ok)
            .ok_or_else(|| {
                "no upgraded follower has caught up with the leader to take over".to_string()
            })?;
        self.reporter.event(
            "move leader",
            "start",
            &format!("{} -> {}", leader.name, target.name),
        );
        let moved = self.site.probe(&cluster.move_leader, target, Some(leader));
        if !moved.ok {
            return Err(format!(
                "moving leadership from {} to {} failed: {}",
                leader.name, target.name, moved.output
            ));
        }
        let confirmed = wait_until(Duration::from_secs(cluster.move_wait_secs), || {
            self.site.probe(&cluster.leader, target, None).ok
        });
        if !confirmed {
            return Err(format!(
                "{} did not report itself leader within {}s of the move",
                target.name, cluster.move_wait_secs
            ));
        }
        self.reporter.event(
            "move leader",
            "ok",
            &format!("{} is the leader", target.name),
        );
        Ok(())
    }

    fn stop(&self, node: &str, reason: String, node_outcome: NodeOutcome) -> ApplyError {
        let _ = self.state.finish_rollout(self.id, "stopped", Some(&reason));
        self.reporter.event("rollout", "failed", &reason);
        ApplyError::RolloutStopped {
            version: self.manifest.version.to_string(),
            node: node.to_owned(),
            reason,
            node_outcome,
        }
    }

    /// Upgrades one node: its own single-node apply, then healthy and caught up.
    fn upgrade(&self, node: &NodeProfile) -> Result<(), ApplyError> {
        let version = self.manifest.version.to_string();
        let remote = self.remote_path(&node.name);
        self.update(
            &node.name,
            NodeUpdate {
                state: Some(node_state::UPGRADING),
                step: Some("apply"),
                ..Default::default()
            },
        );
        self.reporter
            .event("node", "start", &format!("{}: apply {version}", node.name));
        let started = Instant::now();
        let mut stop_at: Option<u64> = None;
        let mut up_at: Option<u64> = None;
        let name = node.name.clone();
        let run = node
            .airlock_apply(
                &["apply", &remote, "--site", &node.site],
                self.options(),
                |e| {
                    let step = e["step"].as_str().unwrap_or_default();
                    let status = e["status"].as_str().unwrap_or_default();
                    let at = e["elapsed_ms"].as_u64();
                    if step == "stop" && status == "start" {
                        stop_at = at;
                    }
                    if (step == "health" && status == "ok")
                        || (step == "rollback" && status != "start")
                    {
                        up_at = at;
                    }
                    if matches!(status, "start" | "failed") || step == "health" {
                        let detail = e["detail"].as_str().unwrap_or_default();
                        self.reporter
                            .event(&format!("{name}: {step}"), status, detail);
                        let _ = self.state.update_rollout_node(
                            self.id,
                            &name,
                            &NodeUpdate {
                                step: Some(step),
                                ..Default::default()
                            },
                        );
                    }
                },
            )
            .map_err(|reason| self.stop(&at_node(&node.name), reason, NodeOutcome::Unchanged))?;
        let stopped_ms = match (stop_at, up_at) {
            (Some(a), Some(b)) if b >= a => Some((b - a) as i64),
            _ => None,
        };
        let apply_ms = started.elapsed().as_millis() as i64;
        if run.code != 0 {
            let last_error = run
                .stderr
                .lines()
                .find(|l| l.starts_with("error: "))
                .unwrap_or("")
                .trim_start_matches("error: ")
                .to_owned();
            use crate::error::exit;
            let code = u8::try_from(run.code).ok();
            let (outcome, state, reason) = match code {
                Some(exit::ROLLED_BACK) => (
                    NodeOutcome::RolledBack,
                    node_state::ROLLED_BACK,
                    format!("its apply failed and it rolled itself back: {last_error}"),
                ),
                Some(exit::FAILED | exit::REFUSED | exit::BUSY | exit::INTERRUPTED) => (
                    NodeOutcome::Unchanged,
                    node_state::FAILED,
                    format!(
                        "its apply did not begin (exit {}), nothing on it changed: {last_error}",
                        run.code
                    ),
                ),
                _ => (
                    NodeOutcome::NeedsOperator,
                    node_state::FAILED,
                    format!(
                        "its apply failed (exit {}) and it needs the operator: {last_error}",
                        run.code
                    ),
                ),
            };
            self.update(
                &node.name,
                NodeUpdate {
                    state: Some(state),
                    stopped_ms,
                    apply_ms: Some(apply_ms),
                    error: Some(&last_error),
                    ..Default::default()
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
                ..Default::default()
            },
        );
        let cluster = &self.site.profile.cluster;
        let wait = Duration::from_secs(cluster.wait_secs);
        let ready = wait_until(wait, || {
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
            let reason = format!(
                "{} runs {version} but was not healthy and caught up within {}s",
                node.name, cluster.wait_secs
            );
            self.update(
                &node.name,
                NodeUpdate {
                    state: Some(node_state::FAILED),
                    version: Some(&version),
                    error: Some(&reason),
                    ..Default::default()
                },
            );
            return Err(self.stop(&at_node(&node.name), reason, NodeOutcome::NeedsOperator));
        }
        self.update(
            &node.name,
            NodeUpdate {
                state: Some(node_state::UPGRADED),
                version: Some(&version),
                step: Some("done"),
                ..Default::default()
            },
        );
        self.reporter.event(
            "node",
            "ok",
            &format!(
                "{}: runs {version}, healthy and caught up; service down {}, apply {:.1}s",
                node.name,
                stopped_ms.map_or_else(|| "?".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                apply_ms as f64 / 1000.0
            ),
        );
        Ok(())
    }

    fn run(&mut self) -> Result<(), ApplyError> {
        let unchanged = NodeOutcome::Unchanged;
        if let Err(e) = self.distribute() {
            return Err(self.stop("before any node stopped", e.to_string(), unchanged));
        }
        loop {
            let pending = self.pending()?;
            if pending.is_empty() {
                break;
            }
            if self.interrupt.requested() {
                let reason = "interrupted by a signal between two nodes; every node is on one version or the other".to_string();
                return Err(self.stop(&at_node(&pending[0].node), reason, unchanged));
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
                .or_else(|| pending.first())
                .map(|n| n.node.clone())
                .unwrap_or_default();
            let node = self.node(&next).cloned().ok_or_else(|| {
                self.stop(&at_node(&next), format!("node {next} is in the rollout but no longer in the cluster profile; put it back"), unchanged)
            })?;
            if node.name == leader.name {
                self.move_leadership(&leader)
                    .map_err(|reason| self.stop(&at_node(&node.name), reason, unchanged))?;
            }
            self.quorum_check(Some(&node.name))
                .map_err(|reason| self.stop(&at_node(&node.name), reason, unchanged))?;
            self.upgrade(&node)?;
        }
        self.state.finish_rollout(self.id, "ok", None)?;
        self.reporter.event(
            "rollout",
            "ok",
            &format!("every member runs {}", self.manifest.version),
        );
        Ok(())
    }
}

/// Runs a rolling upgrade of `bundle` across the cluster; with `resume`,
/// continues the stopped rollout instead (re-checking the leader and quorum first).
///
/// # Errors
/// [`ApplyError::Refused`] when the bundle is refused (nothing changed);
/// [`ApplyError::Preflight`] when a member is unhealthy or a node refused the
/// bundle (nothing stopped); [`ApplyError::RolloutStopped`] when a node failed.
pub fn rollout(
    site: &ClusterSite,
    bundle: Option<&Path>,
    reporter: &Reporter,
    interrupt: &Interrupt,
) -> Result<(), ApplyError> {
    let _lock = coordinator_lock(site)?;
    let state = State::open(&site.profile.paths.state_dir)?;
    let latest = state.latest_rollout()?;
    let (id, bundle) = match (bundle, latest) {
        (None, Some(r)) if r.outcome == "stopped" || r.outcome == "running" => {
            reporter.event("resume", "start", &format!("rollout #{} of {} {}", r.id, r.name, r.version));
            (Some(r.id), PathBuf::from(r.bundle))
        }
        (None, _) => {
            reporter.event("resume", "ok", "no stopped rollout: nothing to do");
            return Ok(());
        }
        (Some(_), Some(r)) if r.outcome == "stopped" || r.outcome == "running" => {
            return Err(ApplyError::Preflight {
                step: "rollout".into(),
                reason: format!(
                    "rollout #{id} of {name} {version} stopped and is not finished; run `airlock-apply resume --site {site}` to continue it, or `airlock-apply rollout abandon --site {site}` to give it up",
                    id = r.id,
                    name = r.name,
                    version = r.version,
                    site = site.path.display(),
                ),
            })
        }
        (Some(b), _) => (None, b.to_owned()),
    };
    reporter.event("verify", "start", &bundle.display().to_string());
    let manifest = verify_here(site, &bundle)?;
    reporter.event(
        "verify",
        "ok",
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
    // Quorum first: refuse to start with a member down.
    rollout
        .quorum_check(None)
        .map_err(|reason| ApplyError::Preflight {
            step: "cluster health".into(),
            reason,
        })?;
    let leader = rollout.leader().map_err(|reason| ApplyError::Preflight {
        step: "finding the leader".into(),
        reason,
    })?;
    reporter.event(
        "cluster",
        "ok",
        &format!("every member is healthy; {} is the leader", leader.name),
    );
    let names: Vec<String> = site.nodes().iter().map(|n| n.name.clone()).collect();
    if let Some(id) = id {
        // Checks passed: the stopped rollout runs again; nodes added to the
        // profile since join it.
        rollout.state.reopen_rollout(id)?;
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
    eprint!("{table}");
    result
}

/// The rollout's nodes as a table: node, version, state, step, down time.
///
/// # Errors
/// [`ApplyError::State`].
pub fn render_table(state: &State, rollout: i64) -> Result<String, ApplyError> {
    let mut out = format!(
        "{:<10} {:<10} {:<12} {:<28} {:>9}  {}\n",
        "node", "version", "state", "step", "down", "error"
    );
    for n in state.rollout_nodes(rollout)? {
        out.push_str(&format!(
            "{:<10} {:<10} {:<12} {:<28} {:>9}  {}\n",
            n.node,
            n.version.as_deref().unwrap_or("?"),
            n.state,
            n.step,
            n.stopped_ms
                .map_or_else(|| "-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
            n.error.as_deref().unwrap_or("")
        ));
    }
    Ok(out)
}

/// The newest rollout and its nodes, for `rollout status`.
///
/// # Errors
/// [`ApplyError::State`].
pub fn status(site: &ClusterSite) -> Result<Option<(RolloutRecord, Vec<RolloutNode>)>, ApplyError> {
    let Some(state) = State::open_existing(&site.profile.paths.state_dir)? else {
        return Ok(None);
    };
    let Some(r) = state.latest_rollout()? else {
        return Ok(None);
    };
    let nodes = state.rollout_nodes(r.id)?;
    Ok(Some((r, nodes)))
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
        Some(r) if r.outcome == "stopped" || r.outcome == "running" => {
            state.finish_rollout(r.id, "abandoned", r.error.as_deref())?;
            reporter.event(
                "rollout",
                "ok",
                &format!(
                    "rollout #{} of {} {} abandoned; the nodes stay as they are",
                    r.id, r.name, r.version
                ),
            );
            Ok(Some(r.id))
        }
        _ => Ok(None),
    }
}
