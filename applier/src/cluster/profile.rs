//! The cluster profile: a `site.toml` with a `[cluster]` table, kept on the
//! host that coordinates a rolling upgrade (docs/SITE.md, "Cluster profile").
//! It names the nodes, how to reach each (`local`, or `ssh` through the
//! operator's own OpenSSH client, so their ssh config, keys and jump hosts
//! work), the path of each node's own site profile on that node, per-node
//! values, and the cluster probes. Every node keeps its own profile, keys and
//! backups: a node verifies each bundle itself and never takes the
//! coordinator's word for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use airlock_formats::Trust;
use serde::Deserialize;

use crate::error::ApplyError;
use crate::site::{read_profile, trust_in_force, Probe, TrustInForce, TrustProfile};
use crate::steps::service::{run_probe, ProbeResult};

/// A loaded cluster profile.
#[derive(Debug, Clone)]
pub struct ClusterSite {
    /// The profile file.
    pub path: PathBuf,
    /// Its folder; probes run here.
    pub dir: PathBuf,
    /// Contents, paths made absolute.
    pub profile: ClusterProfile,
    /// Keys the coordinator checks the bundle against before copying it.
    pub trust: Trust,
    /// Which trust version that is (docs/SITE.md, "Trust updates").
    pub trust_version: TrustInForce,
}

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterProfile {
    /// The cluster.
    pub cluster: Cluster,
    /// Keys the coordinator trusts (each node checks against its own too).
    pub trust: TrustProfile,
    /// Where the coordinator keeps its lock and rollout state.
    pub paths: CoordinatorPaths,
}

/// The coordinator's own folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorPaths {
    /// Rollout state and lock.
    pub state_dir: PathBuf,
}

/// Nodes and probes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Members, in the order followers are upgraded.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeProfile>,
    /// Exit 0 when `{node}` is the leader.
    pub leader: Probe,
    /// Exit 0 when `{node}` is healthy.
    pub healthy: Probe,
    /// Exit 0 when `{node}` has caught up with the leader `{leader}`.
    pub caught_up: Probe,
    /// Moves leadership from `{leader}` to `{node}`.
    pub move_leader: Probe,
    /// After a node's apply: how long to wait for it to be healthy and caught up, seconds (default 30, at least 15).
    #[serde(default = "default_wait")]
    pub wait_secs: u64,
    /// How long to wait for a leadership move to show, seconds (default 30).
    #[serde(default = "default_wait")]
    pub move_wait_secs: u64,
    /// Extra arguments for every `ssh` and `scp` call, e.g. `["-o", "ConnectTimeout=5"]`.
    #[serde(default)]
    pub ssh_options: Vec<String>,
}

fn default_wait() -> u64 {
    30
}

/// How to reach a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// On this host.
    Local,
    /// Over ssh.
    Ssh,
}

/// One member.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeProfile {
    /// Member name, as the cluster knows it.
    pub name: String,
    /// `local` or `ssh`.
    pub transport: TransportKind,
    /// ssh: host name or address (an alias from the user's ssh config works).
    #[serde(default)]
    pub host: Option<String>,
    /// ssh: port.
    #[serde(default)]
    pub port: Option<u16>,
    /// ssh: user.
    #[serde(default)]
    pub user: Option<String>,
    /// ssh: identity file on the coordinator.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    /// The node's own site profile, as a path on that node.
    pub site: String,
    /// The `airlock-apply` to run on the node (default: this one for `local`, `airlock-apply` on the PATH for `ssh`).
    #[serde(default)]
    pub airlock_apply: Option<String>,
    /// ssh: folder on the node the bundle is copied to (default `/tmp`).
    #[serde(default)]
    pub bundle_dir: Option<String>,
    /// Values substituted into the probes as `{NAME}` (and `{leader_NAME}` for the leader).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

impl NodeProfile {
    /// A `local` node named `name` whose site profile is `site`.
    pub fn local(name: &str, site: &str) -> Self {
        Self {
            name: name.into(),
            transport: TransportKind::Local,
            host: None,
            port: None,
            user: None,
            identity_file: None,
            site: site.into(),
            airlock_apply: None,
            bundle_dir: None,
            vars: BTreeMap::new(),
        }
    }
}

impl ClusterSite {
    /// Loads and checks a cluster profile.
    ///
    /// # Errors
    /// [`ApplyError::Site`] naming the file and field.
    pub fn load(path: &Path) -> Result<Self, ApplyError> {
        let site_err = |reason: String| ApplyError::Site {
            path: path.to_owned(),
            reason,
        };
        let (mut profile, dir): (ClusterProfile, PathBuf) =
            read_profile(path, crate::site::ProfileKind::Cluster)?;
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        profile.trust.keys.iter_mut().for_each(abs);
        abs(&mut profile.paths.state_dir);
        let c = &mut profile.cluster;
        if c.nodes.len() < 2 {
            return Err(site_err(
                "cluster: a rolling upgrade needs at least two [[cluster.node]] entries".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for node in &mut c.nodes {
            if !names.insert(node.name.clone()) {
                return Err(site_err(format!(
                    "cluster.node `{}` is listed twice",
                    node.name
                )));
            }
            if node.transport == TransportKind::Local
                && std::path::Path::new(&node.site).is_relative()
            {
                node.site = dir.join(&node.site).display().to_string();
            }
            if node.transport == TransportKind::Ssh && node.host.is_none() {
                return Err(site_err(format!(
                    "cluster.node `{}`: transport `ssh` needs `host`",
                    node.name
                )));
            }
            node.identity_file.iter_mut().for_each(abs);
        }
        for (name, p) in [
            ("cluster.leader", &c.leader),
            ("cluster.healthy", &c.healthy),
            ("cluster.caught_up", &c.caught_up),
            ("cluster.move_leader", &c.move_leader),
        ] {
            p.check(path, name)?;
        }
        c.wait_secs = c.wait_secs.max(15);
        let (trust, trust_version) =
            trust_in_force(path, &profile.trust, &profile.paths.state_dir)?;
        Ok(Self {
            path: path.to_owned(),
            dir,
            profile,
            trust,
            trust_version,
        })
    }

    /// The nodes.
    pub fn nodes(&self) -> &[NodeProfile] {
        &self.profile.cluster.nodes
    }

    /// Runs `probe` for `node`, with `leader`'s values as `{leader_*}`.
    pub fn probe(
        &self,
        probe: &Probe,
        node: &NodeProfile,
        leader: Option<&NodeProfile>,
    ) -> ProbeResult {
        let vars = substitutions(node, leader);
        let rendered = Probe {
            command: probe.command.as_deref().map(|c| render(c, &vars)),
            url: probe.url.as_deref().map(|u| render(u, &vars)),
            timeout_secs: probe.timeout_secs,
        };
        run_probe(&rendered, &self.dir, &[])
    }
}

fn substitutions(node: &NodeProfile, leader: Option<&NodeProfile>) -> BTreeMap<String, String> {
    let mut vars = node.vars.clone();
    vars.insert("node".into(), node.name.clone());
    vars.insert(
        "host".into(),
        node.host.clone().unwrap_or_else(|| "127.0.0.1".into()),
    );
    if let Some(l) = leader {
        for (k, v) in &l.vars {
            vars.insert(format!("leader_{k}"), v.clone());
        }
        vars.insert("leader".into(), l.name.clone());
    }
    vars
}

/// Replaces each `{NAME}` in `template` with its value; unknown names stay as written.
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_node_and_leader_values() {
        let mut node = NodeProfile::local("n2", "x");
        node.vars
            .insert("client_url".into(), "http://127.0.0.1:2".into());
        let mut leader = node.clone();
        leader.name = "n1".into();
        leader
            .vars
            .insert("client_url".into(), "http://127.0.0.1:1".into());
        let vars = substitutions(&node, Some(&leader));
        assert_eq!(
            render(
                "move {leader} ({leader_client_url}) -> {node} ({client_url}) {unknown}",
                &vars
            ),
            "move n1 (http://127.0.0.1:1) -> n2 (http://127.0.0.1:2) {unknown}"
        );
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The shipped examples parse with every field this version knows.
    #[test]
    fn shipped_cluster_and_node_profiles_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/etcd-cluster");
        let cluster: ClusterProfile =
            toml::from_str(&fs_err::read_to_string(root.join("site.toml")).unwrap()).unwrap();
        assert_eq!(cluster.cluster.nodes.len(), 3);
        assert!(cluster
            .cluster
            .move_leader
            .command
            .as_deref()
            .unwrap()
            .contains("{leader_client_url}"));
        let node: crate::site::SiteProfile =
            toml::from_str(&fs_err::read_to_string(root.join("nodes/n1.toml")).unwrap()).unwrap();
        assert_eq!(node.service.name, "etcd member n1");
    }
}
