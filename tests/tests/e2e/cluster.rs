//! Rolling upgrades of a real 3-member etcd cluster on 127.0.0.1: followers
//! first, the leader last, quorum kept, no failed write; a failure mid-rollout
//! and `resume`; refusals; and the same over a real sshd.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::harness::*;

/// How the coordinator reaches the nodes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Local,
    Ssh,
}

/// Three members, each a node folder with its own site profile, and a cluster profile.
struct Cluster {
    members: Vec<Member>,
    nodes: Vec<EtcdNode>,
    profile: PathBuf,
    _sshd: Option<Sshd>,
    _dir: tempfile::TempDir,
}

/// The cluster probes of the shipped example, `examples/etcd-cluster/site.toml`:
/// the tests run the very commands operators start from.
fn example_probes() -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/etcd-cluster/site.toml");
    let text = fs::read_to_string(&example).unwrap();
    let probes: Vec<&str> = text
        .lines()
        .filter(|l| {
            ["leader = ", "healthy = ", "caught_up = ", "move_leader = "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    assert_eq!(probes.len(), 4, "the example lost a probe");
    probes.join("\n") + "\n"
}

impl Cluster {
    fn start(trusted: &[&Path], transport: Transport) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Member> = ["n1", "n2", "n3"].iter().map(|n| Member::new(n)).collect();
        let initial: Vec<String> = members.iter().map(Member::initial_cluster_entry).collect();
        let initial = initial.join(",");
        let mut nodes = Vec::new();
        let mut starts = Vec::new();
        for m in &members {
            let node_dir = tempfile::tempdir_in(dir.path()).unwrap();
            let start = prepare_node(node_dir.path(), m, &initial, "new", trusted, 1, 15);
            starts.push(start);
            let root = node_dir.path().to_path_buf();
            nodes.push(EtcdNode::member_at(&root, m.client_port, node_dir));
        }
        for (node, start) in nodes.iter().zip(&starts) {
            node.run_sh(start);
        }
        for node in &nodes {
            node.wait_healthy(Duration::from_secs(30));
        }
        nodes[0].put_keys(KEY_COUNT);

        let sshd = (transport == Transport::Ssh).then(|| Sshd::start(true));
        let coordinator = dir.path().join("coordinator");
        fs::create_dir_all(coordinator.join("keys")).unwrap();
        let mut keys = String::new();
        for (i, key) in trusted.iter().enumerate() {
            fs::copy(key, coordinator.join(format!("keys/{i}.pub"))).unwrap();
            keys.push_str(&format!("\"keys/{i}.pub\", "));
        }
        let mut profile = format!(
            "[trust]\nkeys = [{keys}]\nthreshold = 1\n\n[paths]\nstate_dir = \"state\"\n\n[cluster]\nwait_secs = 30\n{}",
            example_probes()
        );
        if let Some(sshd) = &sshd {
            profile.push_str(
                "ssh_options = [\"-o\", \"StrictHostKeyChecking=no\", \"-o\", \"UserKnownHostsFile=/dev/null\", \"-o\", \"LogLevel=ERROR\"]\n",
            );
            let _ = sshd;
        }
        for (m, node) in members.iter().zip(&nodes) {
            profile.push_str(&format!(
                "\n[[cluster.node]]\nname = \"{}\"\nsite = \"{}\"\nvars = {{ client_url = \"{}\" }}\n",
                m.name,
                node.site(),
                m.client_url()
            ));
            match &sshd {
                None => profile.push_str("transport = \"local\"\n"),
                Some(sshd) => profile.push_str(&format!(
                    "transport = \"ssh\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\nidentity_file = \"{}\"\nairlock_apply = \"{}\"\nbundle_dir = \"{}\"\n",
                    sshd.port,
                    sshd.identity.display(),
                    bin("airlock-apply").display(),
                    node.root.display()
                )),
            }
        }
        let path = coordinator.join("cluster.toml");
        fs::write(&path, profile).unwrap();
        Self {
            members,
            nodes,
            profile: path,
            _sshd: sshd,
            _dir: dir,
        }
    }

    fn profile(&self) -> String {
        self.profile.display().to_string()
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// The leader's name, asked of every member.
    fn leader(&self) -> String {
        for (m, _) in self.members.iter().zip(&self.nodes) {
            let out = Command::new("etcdctl")
                .args([
                    "--endpoints",
                    &m.client_url(),
                    "endpoint",
                    "status",
                    "-w",
                    "fields",
                ])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let field = |name: &str| {
                text.lines()
                    .find(|l| l.starts_with(&format!("\"{name}\"")))
                    .and_then(|l| l.split(" : ").nth(1))
                    .map(str::to_owned)
            };
            if field("MemberID").is_some() && field("MemberID") == field("Leader") {
                return m.name.clone();
            }
        }
        panic!("no leader");
    }

    fn node(&self, name: &str) -> &EtcdNode {
        let i = self.members.iter().position(|m| m.name == name).unwrap();
        &self.nodes[i]
    }

    fn release(&self, name: &str) -> String {
        fs::read_to_string(self.node(name).root.join("node/RELEASE"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

/// Writes one key at a time, each against the members in turn until one
/// accepts it (2 s timeout each); and samples how many members are healthy.
struct Load {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    retried: Arc<AtomicUsize>,
    samples: Arc<Mutex<Vec<usize>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into()
}

impl Load {
    fn start(endpoints: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let retried = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        {
            let (stop, writes, failed, retried, endpoints) = (
                stop.clone(),
                writes.clone(),
                failed.clone(),
                retried.clone(),
                endpoints.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let agent = agent(Duration::from_secs(2));
                let started = Instant::now();
                let mut i = 0usize;
                // Bounded: at most 20,000 writes or 10 minutes.
                while !stop.load(Ordering::SeqCst) && i < 20_000 && started.elapsed() < Duration::from_secs(600) {
                    let body = serde_json::json!({"key": BASE64.encode(format!("w/{i:06}")), "value": BASE64.encode(format!("v{i}"))}).to_string();
                    let ok = (0..endpoints.len()).any(|k| {
                        let url = format!("{}/v3/kv/put", endpoints[(i + k) % endpoints.len()]);
                        let done = agent.post(&url).header("content-type", "application/json").send(body.as_str()).is_ok();
                        if done && k > 0 {
                            retried.fetch_add(1, Ordering::SeqCst);
                        }
                        done
                    });
                    if ok {
                        writes.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }));
        }
        {
            let (stop, samples) = (stop.clone(), samples.clone());
            threads.push(std::thread::spawn(move || {
                let agent = agent(Duration::from_secs(1));
                while !stop.load(Ordering::SeqCst) {
                    let healthy = endpoints
                        .iter()
                        .filter(|e| {
                            agent
                                .get(&format!("{e}/health"))
                                .call()
                                .ok()
                                .and_then(|mut r| r.body_mut().read_to_string().ok())
                                .is_some_and(|b| b.contains("\"true\""))
                        })
                        .count();
                    samples.lock().unwrap().push(healthy);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }));
        }
        Self {
            stop,
            writes,
            failed,
            retried,
            samples,
            threads,
        }
    }

    /// Stops the load; returns (writes, failed, retried, samples, minimum healthy).
    fn finish(self) -> (usize, usize, usize, usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let samples = self.samples.lock().unwrap();
        (
            self.writes.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            self.retried.load(Ordering::SeqCst),
            samples.len(),
            samples.iter().copied().min().unwrap_or(0),
        )
    }
}

fn count_prefix(endpoint: &str, prefix: &str, end: &str) -> usize {
    let mut resp = agent(Duration::from_secs(5))
        .post(&format!("{endpoint}/v3/kv/range"))
        .header("content-type", "application/json")
        .send(serde_json::json!({"key": BASE64.encode(prefix), "range_end": BASE64.encode(end), "count_only": true}).to_string())
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    v["count"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn release(keys: &Keys, dir: &Path, rolling_allowed: bool) -> PathBuf {
    build_bundle(
        &release_spec(dir, rolling_allowed),
        &keys.secret("release"),
        &dir.join("out"),
    )
}

/// The spec of etcd-node 1.1.0, in `dir/release`.
fn release_spec(dir: &Path, rolling_allowed: bool) -> PathBuf {
    write_release_with(
        &dir.join("release"),
        "1.1.0",
        "^1.0.0",
        false,
        "1.1.0",
        rolling_allowed,
    )
}

/// Runs the rolling upgrade with `--json` and returns (exit code, events, stderr).
fn rolling(args: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
    let out = Command::new(bin("airlock-apply"))
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (
        out.status.code().unwrap_or(-1),
        events,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the rolling upgrade of `bundle` while a writer and a health monitor
/// run; returns (exit code, events, stderr, failed writes, minimum healthy).
fn roll_under_load(
    cluster: &Cluster,
    bundle: &Path,
) -> (i32, Vec<serde_json::Value>, String, usize, usize) {
    let load = Load::start(cluster.endpoints());
    let (code, events, stderr) = rolling(&[
        "apply",
        &bundle.display().to_string(),
        "--site",
        &cluster.profile(),
        "--mode",
        "rolling",
    ]);
    let (writes, failed, _, _, min_healthy) = load.finish();
    eprintln!("{stderr}\nwriter {writes} ok, {failed} failed; minimum healthy {min_healthy}");
    (code, events, stderr, failed, min_healthy)
}

/// The row of node `name` in `rollout status --json`.
fn rollout_node(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["node"] == name)
        .unwrap()
        .clone()
}

/// Node names in the order their applies started.
fn upgrade_order(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["step"] == "node" && e["status"] == "start")
        .filter_map(|e| e["detail"].as_str()?.split(':').next().map(str::to_owned))
        .collect()
}

fn rollout_upgrades_every_member(transport: Transport) {
    let keys = Keys::new(&["release", "next"]);
    let cluster = Cluster::start(&[&keys.public("release")], transport);
    let work = tempfile::tempdir().unwrap();
    let rotate = transport == Transport::Local;
    let mut bundle = if rotate {
        // The release also rotates the cluster's key: it carries trust
        // version 2 (signed by the old key and the new one) and is signed
        // by the new key alone.
        let update = trust_update(
            &work.path().join("trust-2.json"),
            &keys.public("next"),
            2,
            &[&keys.secret("release"), &keys.secret("next")],
        );
        let spec = release_spec(work.path(), true);
        let text = fs::read_to_string(&spec).unwrap();
        fs::write(&spec, format!("trust_update = \"{update}\"\n{text}")).unwrap();
        build_bundle(&spec, &keys.secret("next"), &work.path().join("out"))
    } else {
        release(&keys, work.path(), true)
    };
    if transport == Transport::Ssh {
        // Over ssh the bundle travels as a volume set: the coordinator
        // copies the index and the volumes, each node reads them in place.
        let set = work.path().join("set");
        airlock_build(&[
            "split",
            &bundle.display().to_string(),
            "--volume-size",
            "4M",
            "--out",
            &set.display().to_string(),
        ])
        .ok();
        bundle = set;
    }
    let leader = cluster.leader();
    let load = Load::start(cluster.endpoints());
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let (code, events, stderr) = rolling(&[
        "apply",
        &bundle.display().to_string(),
        "--site",
        &cluster.profile(),
        "--mode",
        "rolling",
    ]);
    let total = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let (writes, failed, retried, samples, min_healthy) = load.finish();
    eprintln!("{stderr}");
    for e in events
        .iter()
        .filter(|e| e["step"] == "node" && e["status"] == "ok")
    {
        eprintln!("ROLLOUT NODE {}", e["detail"].as_str().unwrap_or_default());
    }
    eprintln!(
        "ROLLOUT total {:.1}s; writer: {writes} ok, {failed} failed, {retried} retried on another endpoint; monitor: {samples} samples, minimum {min_healthy} healthy",
        total.as_secs_f64()
    );
    assert_eq!(code, 0, "rollout failed:\n{stderr}");
    let order = upgrade_order(&events);
    assert_eq!(order.len(), 3, "{order:?}");
    assert_eq!(
        order.last(),
        Some(&leader),
        "the leader {leader} was not upgraded last: {order:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["step"] == "move leader" && e["status"] == "ok"),
        "leadership was not moved"
    );
    // The second and third nodes verified, staged and pre-copied while the
    // node before them caught up, then waited for their turn.
    let prepared = events
        .iter()
        .filter(|e| e["step"] == "prepare" && e["status"] == "start")
        .count();
    assert_eq!(prepared, 2, "not every later node was prepared ahead");
    let waited = events
        .iter()
        .filter(|e| {
            e["step"]
                .as_str()
                .is_some_and(|s| s.ends_with(": wait for go"))
        })
        .count();
    assert_eq!(waited, 2, "not every prepared node waited for go");
    for m in ["n1", "n2", "n3"] {
        assert_eq!(cluster.release(m), "1.1.0", "{m} was not upgraded");
        assert!(cluster.node(m).healthy());
        if transport == Transport::Ssh {
            let copied = cluster.node(m).root.join("etcd-node-1.1.0.airlock.index");
            assert!(copied.exists(), "{m} did not get the volume set");
        }
    }
    assert_eq!(failed, 0, "writes failed during the rollout");
    assert!(writes > 50, "the writer barely ran ({writes} writes)");
    assert!(
        min_healthy >= 2,
        "a sample saw only {min_healthy} healthy members"
    );
    for endpoint in cluster.endpoints() {
        assert_eq!(
            count_prefix(&endpoint, "w/", "w0"),
            writes,
            "written keys missing at {endpoint}"
        );
        assert_eq!(count_prefix(&endpoint, "key/", "key0"), KEY_COUNT);
    }
    let status = airlock_apply(&["--json", "rollout", "status", "--site", &cluster.profile()]).ok();
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(status["rollout"]["outcome"], "ok");
    assert!(status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["state"] == "upgraded" && n["version"] == "1.1.0"));
    if rotate {
        // The coordinator and every node keep the carried trust version 2.
        let sites = ["n1", "n2", "n3"]
            .map(|m| cluster.node(m).site())
            .into_iter()
            .chain([cluster.profile()]);
        for site in sites {
            let shown = airlock_apply(&["--json", "trust", "show", "--site", &site]).ok();
            let shown: serde_json::Value = serde_json::from_str(shown.stdout.trim()).unwrap();
            assert_eq!(shown["version"], 2, "{site}: {shown}");
        }
    }
}

#[test]
fn rolling_upgrade_keeps_quorum_and_loses_no_write() {
    rollout_upgrades_every_member(Transport::Local);
}

/// Over ssh, and with the bundle as a volume set.
#[test]
fn rolling_upgrade_over_ssh() {
    rollout_upgrades_every_member(Transport::Ssh);
}

#[test]
fn a_failure_on_the_second_node_stops_the_rollout_and_resume_finishes_it() {
    let keys = Keys::new(&["release"]);
    let cluster = Cluster::start(&[&keys.public("release")], Transport::Local);
    let work = tempfile::tempdir().unwrap();
    let bundle = release(&keys, work.path(), true);
    let leader = cluster.leader();
    let followers: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != leader)
        .collect();
    let (second, third) = (followers[1], leader.as_str());
    // The cause: on the second node the RELEASE file is mapped to the wrong
    // place, so the new version reports the old version and fails its check.
    let site = cluster.node(second).site();
    let good_profile = fs::read_to_string(&site).unwrap();
    fs::write(
        &site,
        good_profile.replace(
            "\"files/RELEASE\" = \"node/RELEASE\"",
            "\"files/RELEASE\" = \"node/RELEASE.new\"",
        ),
    )
    .unwrap();
    let third_binary = sha256_file(&cluster.node(third).root.join("node/bin/etcd"));

    let (code, _, stderr, failed, min_healthy) = roll_under_load(&cluster, &bundle);
    assert_eq!(
        code, 4,
        "expected the rollout to stop with the node rolled back:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("stopped at node {second}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("reports version 1.0.0, expected 1.1.0"),
        "{stderr}"
    );
    assert_eq!(cluster.release(followers[0]), "1.1.0");
    assert_eq!(cluster.release(second), "1.0.0");
    assert!(
        cluster.node(second).healthy(),
        "{second} is not back and healthy"
    );
    assert_eq!(
        sha256_file(&cluster.node(third).root.join("node/bin/etcd")),
        third_binary,
        "the third node was touched"
    );
    assert_eq!(failed, 0);
    assert!(min_healthy >= 2);

    let status = airlock_apply(&["--json", "rollout", "status", "--site", &cluster.profile()]).ok();
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(status["rollout"]["outcome"], "stopped");
    let state_of = |n: &str| rollout_node(&status, n);
    assert_eq!(state_of(followers[0])["state"], "upgraded");
    assert_eq!(state_of(second)["state"], "rolled-back");
    assert!(state_of(second)["error"]
        .as_str()
        .unwrap()
        .contains("expected 1.1.0"));
    assert_eq!(state_of(third)["state"], "verified");
    let text = airlock_apply(&["rollout", "status", "--site", &cluster.profile()]).ok();
    eprintln!("{}", text.stdout);
    // A new rollout is refused until this one is resumed.
    let again = airlock_apply(&[
        "apply",
        &bundle.display().to_string(),
        "--site",
        &cluster.profile(),
        "--mode",
        "rolling",
    ]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(
        again.stderr.contains("airlock-apply resume"),
        "{}",
        again.stderr
    );

    // Fix the cause; resume finishes the rollout.
    fs::write(&site, good_profile).unwrap();
    let resumed = airlock_apply(&["resume", "--site", &cluster.profile()]);
    eprintln!("{}", resumed.stderr);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    for m in ["n1", "n2", "n3"] {
        assert_eq!(cluster.release(m), "1.1.0", "{m} was not upgraded");
    }
    for endpoint in cluster.endpoints() {
        assert_eq!(count_prefix(&endpoint, "key/", "key0"), KEY_COUNT);
    }
}

#[test]
fn a_node_prepared_ahead_is_left_unchanged_when_the_node_before_it_fails() {
    let keys = Keys::new(&["release"]);
    let cluster = Cluster::start(&[&keys.public("release")], Transport::Local);
    let work = tempfile::tempdir().unwrap();
    // The release's post_start hook fails on a node holding a marker: after
    // that node's health check passed, so the next node is prepared already.
    let spec = release_spec(work.path(), true);
    let hook = work.path().join("release/post_start.sh");
    fs::write(
        &hook,
        "#!/bin/sh\n[ ! -e \"$AIRLOCK_RAFT_DIR/../FAIL_POST_START\" ] || { echo 'marked to fail' >&2; exit 1; }\n",
    )
    .unwrap();
    let text = fs::read_to_string(&spec).unwrap();
    fs::write(
        &spec,
        format!("{text}\n[hooks]\npost_start = \"post_start.sh\"\n"),
    )
    .unwrap();
    let bundle = build_bundle(&spec, &keys.secret("release"), &work.path().join("out"));
    let leader = cluster.leader();
    let followers: Vec<String> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != leader)
        .map(str::to_owned)
        .collect();
    let (first, second) = (&followers[0], &followers[1]);
    let marker = cluster.node(first).root.join("node/FAIL_POST_START");
    fs::write(&marker, "").unwrap();
    let second_node = cluster.node(second);
    let before = second_node.snapshot();
    let backups = || {
        fs::read_dir(second_node.root.join("backups"))
            .unwrap()
            .count()
    };
    let backups_before = backups();

    let (code, events, stderr, failed, min_healthy) = roll_under_load(&cluster, &bundle);
    assert_eq!(
        code, 4,
        "the rollout did not stop with {first} rolled back:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("stopped at node {first}")),
        "{stderr}"
    );
    let prepare = |status: &str| {
        events
            .iter()
            .filter(|e| e["step"] == "prepare" && e["status"] == status)
            .filter_map(|e| e["detail"].as_str())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(prepare("start").len(), 1, "{events:#?}");
    assert!(prepare("start")[0].starts_with(&format!("{second}: ")));
    let cancelled = prepare("info");
    assert_eq!(cancelled.len(), 1, "{events:#?}");
    assert!(
        cancelled[0].contains(&format!(
            "{second}: not its turn now; its apply ended before the stop, the node is unchanged"
        )),
        "{cancelled:?}"
    );
    // The prepared node staged and pre-copied, and left nothing behind.
    assert_eq!(second_node.snapshot(), before);
    assert!(second_node.healthy());
    assert_eq!(backups(), backups_before, "a pre-copy was left on {second}");
    let staged = fs::read_dir(second_node.root.join("state/staging"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(staged, 0, "the staging folder was left on {second}");
    assert_eq!(failed, 0);
    assert!(min_healthy >= 2);
    let status = airlock_apply(&["--json", "rollout", "status", "--site", &cluster.profile()]).ok();
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    let state_of = |n: &str| rollout_node(&status, n)["state"].clone();
    assert_eq!(state_of(first), "rolled-back");
    assert_eq!(state_of(second), "verified");

    // Without the marker, resume upgrades every member.
    fs::remove_file(&marker).unwrap();
    let resumed = airlock_apply(&["resume", "--site", &cluster.profile()]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    for m in ["n1", "n2", "n3"] {
        assert_eq!(cluster.release(m), "1.1.0", "{m} was not upgraded");
    }
}

#[test]
fn a_rollout_refuses_a_cluster_with_a_member_down_and_a_bundle_that_cannot_mix() {
    let keys = Keys::new(&["release"]);
    let cluster = Cluster::start(&[&keys.public("release")], Transport::Local);
    let work = tempfile::tempdir().unwrap();

    let no_mix = release(&keys, &work.path().join("nomix"), false);
    let run = airlock_apply(&[
        "apply",
        &no_mix.display().to_string(),
        "--site",
        &cluster.profile(),
        "--mode",
        "rolling",
    ]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("does not allow mixed versions"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("maintenance window"), "{}", run.stderr);

    let bundle = release(&keys, work.path(), true);
    let down = if cluster.leader() == "n3" { "n2" } else { "n3" };
    cluster.node(down).run_sh("./stop.sh");
    let before: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|m| sha256_file(&cluster.node(m).root.join("node/bin/etcd")))
        .collect();
    let run = airlock_apply(&[
        "apply",
        &bundle.display().to_string(),
        "--site",
        &cluster.profile(),
        "--mode",
        "rolling",
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("member {down} is unhealthy")),
        "{}",
        run.stderr
    );
    let after: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|m| sha256_file(&cluster.node(m).root.join("node/bin/etcd")))
        .collect();
    assert_eq!(before, after, "a refused rollout changed a node");
    for m in ["n1", "n2", "n3"] {
        assert_eq!(cluster.release(m), "1.0.0");
    }
}
