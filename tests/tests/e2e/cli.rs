//! The command-line contract, pinned in files under `tests/e2e/cli/`: every
//! `--help` and `--version`, each exit code of `airlock-apply` from 1 to 8
//! with its `error:` and `help:` lines, and the shape of each command's
//! `--json` output (field names, types and the protocol's words; values
//! that change from run to run are replaced by their type).
//!
//! After an intended change, `SNAPSHOTS=overwrite cargo test -p
//! airlock-tests --test e2e cli::` rewrites the files; review their diff.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use snapbox::{Assert, Data, Redactions};

use crate::demo::Demo;
use crate::harness::*;

fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/cli")
}

/// What changes from run to run, replaced by a placeholder.
fn redactions(root: Option<&Path>) -> Redactions {
    let mut r = Redactions::new();
    if let Some(root) = root {
        r.insert("[ROOT]", root.display().to_string()).unwrap();
    }
    let regex = |pattern: &str| regex::Regex::new(pattern).unwrap();
    r.insert("[ELAPSED]", regex(r"\[ *\d+\.\d\ds\]")).unwrap();
    r.insert("[SECS]", regex(r"(?<redacted>\d+\.\d)s")).unwrap();
    r.insert("[HASH]", regex(r"[0-9a-f]{64}")).unwrap();
    r.insert("[KEYID]", regex(r"\b[0-9A-F]{16}\b")).unwrap();
    r.insert("[PID]", regex(r"pid (?<redacted>\d+)")).unwrap();
    r.insert("[PORT]", regex(r"127\.0\.0\.1:(?<redacted>\d+)"))
        .unwrap();
    r.insert("[UNIX]", regex(r"\b1[7-9]\d{8}\b")).unwrap();
    r.insert(
        "[TIME]",
        regex(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)"),
    )
    .unwrap();
    r.insert(
        "[PLATFORM]",
        format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
    )
    .unwrap();
    r
}

/// Compares `actual` with the snapshot file `name`.
pub(crate) fn check(name: &str, actual: &str, root: Option<&Path>) {
    Assert::new()
        .action_env("SNAPSHOTS")
        .redact_with(redactions(root))
        .eq(
            actual.to_owned(),
            Data::read_from(&snapshot_dir().join(name), None),
        );
}

#[test]
fn every_help_and_version_text_is_pinned() {
    let apply_commands: &[&[&str]] = &[
        &[],
        &["verify"],
        &["plan"],
        &["apply"],
        &["resume"],
        &["rollback"],
        &["status"],
        &["rollout"],
        &["rollout", "status"],
        &["rollout", "abandon"],
        &["backups"],
        &["backups", "list"],
        &["backups", "verify"],
        &["backups", "prune"],
        &["history"],
        &["check-media"],
        &["repair"],
        &["trust"],
        &["trust", "install"],
        &["trust", "show"],
    ];
    let build_commands: &[&[&str]] = &[
        &[],
        &["keygen"],
        &["build"],
        &["sign"],
        &["inspect"],
        &["verify"],
        &["split"],
        &["join"],
        &["trust"],
        &["trust", "new"],
        &["trust", "sign"],
    ];
    for (program, commands) in [
        ("airlock-apply", apply_commands),
        ("airlock-build", build_commands),
    ] {
        for command in commands {
            let mut args = command.to_vec();
            args.push("--help");
            let out = std::process::Command::new(bin(program))
                .args(&args)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "{program} {args:?}");
            let name = std::iter::once(program)
                .chain(command.iter().copied())
                .collect::<Vec<_>>()
                .join("-");
            check(
                &format!("help/{name}.txt"),
                &String::from_utf8_lossy(&out.stdout),
                None,
            );
        }
        let out = std::process::Command::new(bin(program))
            .arg("--version")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        check(
            &format!("version/{program}.txt"),
            &String::from_utf8_lossy(&out.stdout),
            None,
        );
    }
}

/// The `error:` line and what follows it.
fn error_tail(stderr: &str) -> String {
    let start = stderr.find("error:").unwrap_or(0);
    stderr[start..].to_owned()
}

/// Checks the exit code and pins the error and help lines of `run`.
fn check_exit(code: i32, name: &str, run: &Run, root: &Path) {
    assert_eq!(run.code, code, "{}", run.stderr);
    let tail = error_tail(&run.stderr);
    assert!(tail.contains("error:"), "{}", run.stderr);
    if code != 2 {
        assert!(tail.contains("\nhelp: "), "no help line:\n{}", run.stderr);
    }
    check(&format!("exit/{code}-{name}.txt"), &tail, Some(root));
}

#[test]
fn exit_1_the_site_profile_cannot_be_read() {
    let demo = Demo::start();
    let missing = demo.root.join("missing.toml");
    let run = airlock_apply(&[
        "apply",
        &demo.bundle(),
        "--site",
        &missing.display().to_string(),
    ]);
    check_exit(1, "site-profile", &run, &demo.root);
}

/// A cluster profile beside the demo site: two local nodes, n1 the leader,
/// every probe passing; `n2_airlock_apply` is the program run for n2.
pub(crate) fn cluster_profile(demo: &Demo, n2_airlock_apply: Option<&Path>) -> String {
    let cluster = demo.root.join("cluster.toml");
    let n2 = n2_airlock_apply
        .map(|p| format!("airlock_apply = \"{}\"\n", p.display()))
        .unwrap_or_default();
    fs::write(
        &cluster,
        format!(
            r#"[trust]
keys = ["{key}"]

[paths]
state_dir = "coordinator"

[cluster]
leader = {{ command = "test {{node}} = n1" }}
healthy = {{ command = "true" }}
caught_up = {{ command = "true" }}
move_leader = {{ command = "true" }}

[[cluster.node]]
name = "n1"
transport = "local"
site = "site/site.toml"

[[cluster.node]]
name = "n2"
transport = "local"
site = "site/site.toml"
{n2}"#,
            key = demo.keys.public("release").display()
        ),
    )
    .unwrap();
    cluster.display().to_string()
}

#[test]
fn exit_1_a_node_running_another_airlock_version_is_refused() {
    let demo = Demo::start();
    // An airlock-apply from before the protocol: its status has no version.
    let old = demo.root.join("old-airlock-apply");
    fs::write(
        &old,
        "#!/bin/sh\necho '{\"installed\":{\"version\":\"1.0.0\",\"source\":\"state database\"},\"interrupted_apply\":null,\"applies\":[],\"backups\":[]}'\n",
    )
    .unwrap();
    fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cluster = cluster_profile(&demo, Some(&old));
    let run = airlock_apply(&[
        "apply",
        &demo.bundle(),
        "--site",
        &cluster,
        "--mode",
        "rolling",
    ]);
    check_exit(1, "protocol", &run, &demo.root);
    // Nothing changed on the node that speaks this protocol.
    assert_eq!(
        fs::read_to_string(demo.site_dir().join("node/RELEASE")).unwrap(),
        "1.0.0\n"
    );
}

#[test]
fn exit_2_the_command_line_is_wrong() {
    // No bundle.
    let run = airlock_apply(&["apply", "--site", "site.toml"]);
    check_exit(2, "usage", &run, Path::new("/nonexistent"));
}

#[test]
fn exit_3_the_bundle_is_refused() {
    let demo = Demo::start();
    let billing = demo.release("1.1.0", |release| {
        let spec = release.join("bundle.toml");
        let text = fs::read_to_string(&spec).unwrap();
        fs::write(&spec, text.replace("name = \"demo\"", "name = \"billing\"")).unwrap();
    });
    let run = airlock_apply(&["apply", &billing, "--site", &demo.site()]);
    check_exit(3, "refused", &run, &demo.root);
}

#[test]
fn exit_4_the_apply_failed_and_was_rolled_back() {
    let demo = Demo::start();
    demo.edit_site(|s| s.replace("health_wait_secs = 15", "health_wait_secs = 2"));
    let broken = demo.release("1.2.0", |release| {
        fs::write(release.join("service.conf"), "healthy = false\n").unwrap();
        let spec = release.join("bundle.toml");
        let mut text = fs::read_to_string(&spec).unwrap();
        text.push_str(
            "\n[[file]]\nsource = \"service.conf\"\ninstall_path = \"/opt/demo/service.conf\"\n",
        );
        fs::write(&spec, text).unwrap();
    });
    let run = airlock_apply(&["apply", &broken, "--site", &demo.site()]);
    check_exit(4, "rolled-back", &run, &demo.root);
    assert!(demo.healthy());
}

#[test]
fn exit_5_the_rollback_did_not_complete() {
    let demo = Demo::start();
    // The new version's post_start hook fails and leaves a marker that makes
    // the start command fail: the old version cannot start again.
    demo.edit_site(|s| {
        s.replace("health_wait_secs = 15", "health_wait_secs = 2")
            .replace(
                "start = \"nohup",
                "start = \"test ! -f node/no-start && nohup",
            )
    });
    let breaking = demo.release("1.2.0", |release| {
        fs::write(
            release.join("hooks/announce.sh"),
            "#!/bin/sh\ntouch node/no-start\necho 'announce failed' >&2\nexit 1\n",
        )
        .unwrap();
    });
    let run = airlock_apply(&["apply", &breaking, "--site", &demo.site()]);
    check_exit(5, "needs-operator", &run, &demo.root);
}

#[test]
fn exit_6_another_apply_holds_the_lock() {
    let demo = Demo::start();
    let state = demo.site_dir().join("state");
    fs::create_dir_all(&state).unwrap();
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.join("apply.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    std::io::Write::write_all(&mut &lock, std::process::id().to_string().as_bytes()).unwrap();
    let run = airlock_apply(&["apply", &demo.bundle(), "--site", &demo.site()]);
    check_exit(6, "busy", &run, &demo.root);
    drop(lock);
}

#[test]
fn exit_7_an_interrupted_apply_must_be_resumed_first() {
    let demo = Demo::start();
    let (_, code, stderr) = apply_with_signal(
        &["apply", &demo.bundle(), "--site", &demo.site()],
        "KILL",
        |e, _| e.step == "stop" && e.status == "ok",
    );
    assert_eq!(code, -1, "{stderr}");
    let run = airlock_apply(&["apply", &demo.bundle(), "--site", &demo.site()]);
    check_exit(7, "interrupted", &run, &demo.root);
    let resumed = airlock_apply(&["resume", "--site", &demo.site()]);
    assert_eq!(resumed.code, 4, "{}", resumed.stderr);
}

#[test]
fn exit_8_the_audit_log_was_changed() {
    let demo = Demo::start();
    airlock_apply(&["apply", &demo.bundle(), "--site", &demo.site()]).ok();
    let conn =
        rusqlite::Connection::open(demo.site_dir().join("state/airlock-state.sqlite")).unwrap();
    conn.execute_batch(
        "DROP TRIGGER audit_no_update; UPDATE audit SET outcome = 'failed' WHERE id = 1;",
    )
    .unwrap();
    let run = airlock_apply(&["history", "--site", &demo.site(), "--check"]);
    check_exit(8, "tampered", &run, &demo.root);
}

/// The shape of a JSON value: field names, the protocol's own words (the
/// values of `keep` keys), and for anything else its type.
fn shape(value: &Value, keep: &[&str]) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if keep.contains(&k.as_str()) && !v.is_object() && !v.is_array() {
                        v.clone()
                    } else {
                        shape(v, keep)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| shape(v, keep)).collect()),
        Value::String(_) => Value::String("<string>".into()),
        Value::Number(_) => Value::String("<number>".into()),
        Value::Bool(_) => Value::String("<bool>".into()),
        Value::Null => Value::Null,
    }
}

/// Every line of a `--json` run's stdout as its shape, one a line.
pub(crate) fn shapes(stdout: &str) -> String {
    const KEEP: &[&str] = &[
        "type",
        "protocol",
        "step",
        "status",
        "kind",
        "entry",
        "outcome",
        "exit_code",
        "label",
        "state",
        "action",
        "from",
        "to",
        "complete",
        "intact",
        "fits",
    ];
    let mut out = String::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        out.push_str(&serde_json::to_string(&shape(&value, KEEP)).unwrap());
        out.push('\n');
    }
    out
}

#[test]
fn the_json_of_every_command_keeps_its_shape() {
    let demo = Demo::start();
    let site = demo.site();
    let bundle = demo.bundle();
    let root = demo.root.clone();
    let cases: Vec<(&str, Vec<&str>, i32)> = vec![
        ("verify", vec!["verify", &bundle, "--site", &site], 0),
        ("plan", vec!["plan", &bundle, "--site", &site], 0),
        ("apply", vec!["apply", &bundle, "--site", &site], 0),
        ("status", vec!["status", "--site", &site], 0),
        ("history", vec!["history", "--site", &site], 0),
        ("trust-show", vec!["trust", "show", "--site", &site], 0),
        (
            "history-check",
            vec!["history", "--site", &site, "--check"],
            0,
        ),
        ("backups-list", vec!["backups", "list", "--site", &site], 0),
        (
            "backups-verify",
            vec!["backups", "verify", "--site", &site],
            0,
        ),
        (
            "backups-prune",
            vec!["backups", "prune", "--site", &site],
            0,
        ),
        ("rollback", vec!["rollback", "--site", &site, "--yes"], 0),
        ("resume", vec!["resume", "--site", &site], 0),
        (
            "error",
            vec!["apply", &bundle, "--site", "/nonexistent/site.toml"],
            1,
        ),
        ("usage-error", vec!["aply"], 2),
        ("check-media", vec!["check-media", &bundle], 0),
    ];
    for (name, args, code) in cases {
        let mut all = vec!["--json"];
        all.extend(args);
        let run = airlock_apply(&all);
        assert_eq!(run.code, code, "{name}:\n{}", run.stderr);
        check(
            &format!("json/{name}.jsonl"),
            &shapes(&run.stdout),
            Some(&root),
        );
    }
    // A coordinator's commands, on a cluster profile with no rollout yet.
    let cluster = cluster_profile(&demo, None);
    for (name, args) in [
        (
            "rollout-status",
            vec!["--json", "rollout", "status", "--site", &cluster],
        ),
        (
            "rollout-abandon",
            vec!["--json", "rollout", "abandon", "--site", &cluster],
        ),
    ] {
        let run = airlock_apply(&args).ok();
        check(
            &format!("json/{name}.jsonl"),
            &shapes(&run.stdout),
            Some(&root),
        );
    }
}
