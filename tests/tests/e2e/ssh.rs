//! The ssh transport against a real sshd on 127.0.0.1 that cannot take the
//! bundle: one without the `sftp` subsystem (OpenSSH 9's scp copies with
//! SFTP), and one that does not authorize the coordinator's key. The
//! rollout stops before any node changed, with an error that names the
//! node and the requirement it misses (docs/SITE.md, "Transports").

use std::fs;
use std::path::{Path, PathBuf};

use crate::harness::*;

/// Two nodes laid out at 1.0.0 (their services are not started: the
/// rollout must stop before it asks them anything), reached through
/// `sshd` with `identity`, each with `bundle_dir` the folder `incoming`
/// in it (made when `make_incoming`), and a cluster profile whose probes
/// pass.
struct Setup {
    nodes: Vec<PathBuf>,
    profile: PathBuf,
    bundle: PathBuf,
    _keys: Keys,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn new(sshd: &Sshd, identity: &Path, make_incoming: bool) -> Self {
        let keys = Keys::new(&["release"]);
        let dir = tempfile::tempdir().unwrap();
        let spec = write_release(&dir.path().join("release"), "1.1.0", "1.0.0", false);
        let bundle = build_bundle(&spec, &keys.secret("release"), &dir.path().join("out"));
        let coordinator = dir.path().join("coordinator");
        fs::create_dir_all(coordinator.join("keys")).unwrap();
        fs::copy(keys.public("release"), coordinator.join("keys/0.pub")).unwrap();
        let mut profile = String::from(
            "[trust]\nkeys = [\"keys/0.pub\"]\nthreshold = 1\n\n[paths]\nstate_dir = \"state\"\n\n[cluster]\n\
             leader = { command = \"test {node} = n2\" }\nhealthy = { command = \"true\" }\n\
             caught_up = { command = \"true\" }\nmove_leader = { command = \"true\" }\n\
             ssh_options = [\"-o\", \"StrictHostKeyChecking=no\", \"-o\", \"UserKnownHostsFile=/dev/null\", \"-o\", \"LogLevel=ERROR\"]\n",
        );
        let members = [Member::new("n1"), Member::new("n2")];
        let initial: Vec<String> = members.iter().map(Member::initial_cluster_entry).collect();
        let mut nodes = Vec::new();
        for m in &members {
            let root = dir.path().join(&m.name);
            prepare_node(
                &root,
                m,
                &initial.join(","),
                "new",
                &[&keys.public("release")],
                1,
                15,
            );
            if make_incoming {
                fs::create_dir_all(root.join("incoming")).unwrap();
            }
            profile.push_str(&format!(
                "\n[[cluster.node]]\nname = \"{}\"\ntransport = \"ssh\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\n\
                 identity_file = \"{}\"\nsite = \"{}\"\nairlock_apply = \"{}\"\nbundle_dir = \"{}\"\n",
                m.name,
                sshd.port,
                identity.display(),
                root.join("site.toml").display(),
                bin("airlock-apply").display(),
                root.join("incoming").display()
            ));
            nodes.push(root);
        }
        let path = coordinator.join("cluster.toml");
        fs::write(&path, profile).unwrap();
        Self {
            nodes,
            profile: path,
            bundle,
            _keys: keys,
            _dir: dir,
        }
    }

    /// Every file of every node, hashed.
    fn snapshot(&self) -> Vec<String> {
        self.nodes.iter().map(|n| sha256_tree(n)).collect()
    }

    /// Runs the rolling upgrade; asserts it stopped before any node, with
    /// exit 1, and that no node changed; returns its stderr.
    fn roll_and_stop(&self) -> String {
        let before = self.snapshot();
        let run = airlock_apply(&[
            "apply",
            &self.bundle.display().to_string(),
            "--site",
            &self.profile.display().to_string(),
            "--mode",
            "rolling",
        ]);
        assert_eq!(
            run.code, 1,
            "stdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
        assert!(
            run.stderr
                .contains("rolling upgrade to 1.1.0 stopped before any node stopped: node n1:"),
            "{}",
            run.stderr
        );
        assert_eq!(self.snapshot(), before, "a node changed");
        for node in &self.nodes {
            assert!(
                fs::read_dir(node.join("incoming")).map_or(true, |d| d.count() == 0),
                "a bundle reached {}",
                node.display()
            );
            assert!(
                !node.join("state/airlock-state.sqlite").exists(),
                "airlock-apply ran on {}",
                node.display()
            );
        }
        let status = airlock_apply(&[
            "--json",
            "rollout",
            "status",
            "--site",
            &self.profile.display().to_string(),
        ])
        .ok();
        let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
        assert_eq!(status["rollout"]["outcome"], "stopped", "{status}");
        run.stderr
    }
}

#[test]
fn a_node_without_the_sftp_subsystem_is_named_and_unchanged() {
    let sshd = Sshd::start(false);
    let setup = Setup::new(&sshd, &sshd.identity, true);
    let stderr = setup.roll_and_stop();
    for expected in [
        "node n1: cannot copy the bundle: the sshd on host 127.0.0.1 offers no `sftp` subsystem",
        "said `subsystem request failed on channel 0`",
        "add `Subsystem sftp internal-sftp`",
        "sshd_config",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("\nhelp: "), "{stderr}");
}

#[test]
fn a_node_that_refuses_the_key_gets_the_login_error() {
    let sshd = Sshd::start(true);
    let setup = Setup::new(&sshd, &sshd.stranger, true);
    let stderr = setup.roll_and_stop();
    let check = format!(
        "`ssh -o BatchMode=yes -p {} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1 true`",
        sshd.port,
        sshd.stranger.display()
    );
    for expected in [
        "node n1: cannot copy the bundle: ssh cannot log in to host 127.0.0.1 without a prompt (BatchMode=yes)",
        &check,
        "said `root@127.0.0.1: Permission denied (publickey).`",
        "until that command succeeds",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("sftp"), "{stderr}");
    assert!(stderr.contains("\nhelp: "), "{stderr}");
}

#[test]
fn a_missing_bundle_dir_is_named_once_login_and_sftp_work() {
    let sshd = Sshd::start(true);
    let setup = Setup::new(&sshd, &sshd.identity, false);
    let stderr = setup.roll_and_stop();
    let dir = setup.nodes[0].join("incoming");
    for expected in [
        format!(
            "node n1: copying the bundle with scp to root@127.0.0.1:{}/",
            dir.display()
        ),
        "No such file or directory".to_owned(),
        format!(
            "ssh login and sftp work, so check that bundle_dir `{}` exists on the node",
            dir.display()
        ),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(!dir.exists());
}
