//! The shipped demo (examples/demo, as examples/demo.sh runs it) as a
//! fixture: a throwaway site running airlock-demo-service 1.0.0 on a free
//! port of 127.0.0.1, and the demo 1.1.0 bundle built from the example's
//! spec. No etcd: fast enough for the command-line contract tests too.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use airlock_applier::protocol::{parse_line, Message, Status};
use airlock_applier::transaction::step::Step;

use crate::harness::*;

/// Copies the folder `from` into `to`, keeping permission bits and links.
pub fn copy_tree(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let dst = to.join(entry.path().strip_prefix(from).unwrap());
        if entry.file_type().is_dir() {
            fs::create_dir_all(&dst).unwrap();
        } else if entry.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path()).unwrap(), &dst).unwrap();
        } else {
            fs::copy(entry.path(), &dst).unwrap();
        }
    }
}

/// A demo site and its 1.1.0 bundle, in a temporary folder.
pub struct Demo {
    pub root: PathBuf,
    pub port: u16,
    pub keys: Keys,
    bundle: PathBuf,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// Builds demo 1.1.0 and starts a site running 1.0.0.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let keys = Keys::new(&["release"]);
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
        let release = root.join("release");
        copy_tree(&examples, &release);
        fs::create_dir_all(release.join("bin")).unwrap();
        fs::copy(
            bin("airlock-demo-service"),
            release.join("bin/airlock-demo-service"),
        )
        .unwrap();
        let bundle = build_bundle(
            &release.join("bundle.toml"),
            &keys.secret("release"),
            &root.join("out"),
        );
        let port = free_port();
        let site = root.join("site");
        for sub in ["node/bin", "keys"] {
            fs::create_dir_all(site.join(sub)).unwrap();
        }
        let profile = fs::read_to_string(release.join("site/site.toml"))
            .unwrap()
            .replace("18431", &port.to_string());
        fs::write(site.join("site.toml"), profile).unwrap();
        fs::copy(keys.public("release"), site.join("keys/release.pub")).unwrap();
        fs::copy(
            bin("airlock-demo-service"),
            site.join("node/bin/demo-service"),
        )
        .unwrap();
        fs::write(site.join("node/RELEASE"), "1.0.0\n").unwrap();
        fs::write(site.join("node/service.conf"), "healthy = true\n").unwrap();
        let demo = Self {
            root,
            port,
            keys,
            bundle,
            _dir: dir,
        };
        demo.start_service();
        demo
    }

    /// The site folder.
    pub fn site_dir(&self) -> PathBuf {
        self.root.join("site")
    }

    /// The site profile.
    pub fn site(&self) -> String {
        self.site_dir().join("site.toml").display().to_string()
    }

    /// The demo 1.1.0 bundle.
    pub fn bundle(&self) -> String {
        self.bundle.display().to_string()
    }

    /// Runs the site's start command and waits until the service answers.
    pub fn start_service(&self) {
        let profile: toml::Table =
            toml::from_str(&fs::read_to_string(self.site()).unwrap()).unwrap();
        let start = profile["service"]["start"].as_str().unwrap().to_owned();
        let status = Command::new("sh")
            .arg("-c")
            .arg(start)
            .current_dir(self.site_dir())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.healthy() {
            assert!(Instant::now() < deadline, "the demo service did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the demo service answers its health check.
    pub fn healthy(&self) -> bool {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        agent
            .get(&format!("http://127.0.0.1:{}/health", self.port))
            .call()
            .is_ok()
    }

    /// Changes the site profile.
    pub fn edit_site(&self, edit: impl FnOnce(String) -> String) {
        let path = self.site_dir().join("site.toml");
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, edit(text)).unwrap();
    }

    /// Builds another release of the demo: `edit` changes a copy of the
    /// release folder (its `bundle.toml` says version `version`).
    pub fn release(&self, version: &str, edit: impl FnOnce(&Path)) -> String {
        self.release_as(version, &self.keys.secret("release"), None, edit)
    }

    /// [`Demo::release`] signed by the secret key `key`, built at
    /// `created_at` (Unix seconds; [`build_epoch`] when `None`).
    pub fn release_as(
        &self,
        version: &str,
        key: &str,
        created_at: Option<u64>,
        edit: impl FnOnce(&Path),
    ) -> String {
        let release = self.root.join(format!("release-{version}"));
        copy_tree(&self.root.join("release"), &release);
        let spec = release.join("bundle.toml");
        let text = fs::read_to_string(&spec).unwrap();
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("version = ") {
                    format!("version = \"{version}\"")
                } else if l.starts_with("upgrades_from = ") {
                    "upgrades_from = \">=1.0.0\"".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        fs::write(&spec, text).unwrap();
        fs::write(release.join("RELEASE"), format!("{version}\n")).unwrap();
        edit(&release);
        let out = self.root.join("out");
        let Some(created_at) = created_at else {
            return build_bundle(&spec, key, &out).display().to_string();
        };
        let run = Command::new(bin("airlock-build"))
            .args(["--no-progress", "build", "--spec"])
            .arg(&spec)
            .args(["--key", key, "--out"])
            .arg(&out)
            .env("SOURCE_DATE_EPOCH", created_at.to_string())
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        String::from_utf8_lossy(&run.stdout).trim().to_owned()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg("[ -f node/pid ] && kill $(cat node/pid)")
            .current_dir(self.site_dir())
            .status();
    }
}

/// The typed messages of a `--json` run.
pub fn messages(stdout: &str) -> Vec<Message> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_line(l).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

#[test]
fn plan_and_apply_of_the_demo_list_the_same_steps_in_the_same_order() {
    let demo = Demo::start();
    let plan = airlock_apply(&["--json", "plan", &demo.bundle(), "--site", &demo.site()]).ok();
    let Some(Message::Plan(plan)) = messages(&plan.stdout).pop() else {
        panic!("plan printed no plan:\n{}", plan.stdout);
    };
    let planned: Vec<Step> = plan.steps.into_iter().map(|s| s.step).collect();

    let run = airlock_apply(&["--json", "apply", &demo.bundle(), "--site", &demo.site()]).ok();
    let executed: Vec<Step> = messages(&run.stdout)
        .into_iter()
        .filter_map(|m| match m {
            Message::Event(e) if e.status == Status::Start => e.apply_step,
            _ => None,
        })
        .collect();
    assert_eq!(planned, executed);
    // Every kind of step the demo has is in the list: hooks, a binary and a
    // file, two migrations.
    let count = |f: fn(&Step) -> bool| executed.iter().filter(|s| f(s)).count();
    assert_eq!(count(|s| matches!(s, Step::PreStopHook { .. })), 1);
    assert_eq!(count(|s| matches!(s, Step::PostStartHook { .. })), 1);
    assert_eq!(count(|s| matches!(s, Step::Install { .. })), 2);
    assert_eq!(count(|s| matches!(s, Step::Migrate { .. })), 2);
    assert!(matches!(executed.last(), Some(Step::Commit { .. })));
    assert_eq!(
        fs::read_to_string(demo.site_dir().join("node/RELEASE")).unwrap(),
        "1.1.0\n"
    );
    assert!(demo.healthy());
}
