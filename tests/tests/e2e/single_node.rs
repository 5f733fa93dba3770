//! Upgrade and automatic rollback of one node.

use std::time::Instant;

use rusqlite::Connection;
use sha2::Digest as _;

use crate::harness::*;

#[test]
fn upgrade_installs_binary_runs_migrations_and_keeps_every_key() {
    let keys = Keys::new(&["release"]);
    let node = EtcdNode::start(&[&keys.public("release")], 1);
    let work = tempfile::tempdir().unwrap();
    let spec = write_release(&work.path().join("release"), "1.1.0", "^1.0.0", false);
    let started = Instant::now();
    let bundle = build_bundle(&spec, &keys.secret("release"), &work.path().join("out"));
    let build_secs = started.elapsed().as_secs_f64();
    let bundle_size = std::fs::metadata(&bundle).unwrap().len();
    let expected_binary = sha256_file(&work.path().join("release/etcd"));
    let db_rows_before = sqlite_dump_hash(&node.root.join("node/app.db"));

    let started = Instant::now();
    let run = airlock_apply(&[
        "apply",
        &bundle.display().to_string(),
        "--site",
        &node.site(),
    ])
    .ok();
    let apply_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "upgrade 1.0.0 -> 1.1.0: bundle {bundle_size} bytes built in {build_secs:.2}s, apply took {apply_secs:.2}s\n{}",
        run.stderr
    );

    // The new binary is in place and etcd runs it, healthy, with every key.
    assert_eq!(
        sha256_file(&node.root.join("node/bin/etcd")),
        expected_binary
    );
    assert_eq!(
        std::fs::read_to_string(node.root.join("node/RELEASE")).unwrap(),
        "1.1.0\n"
    );
    assert!(node.healthy());
    assert_eq!(node.count_keys(), KEY_COUNT);

    // Both migrations ran and are recorded with their checksums.
    let db = Connection::open(node.root.join("node/app.db")).unwrap();
    let recorded: Vec<(String, String, String, String)> = db
        .prepare(
            "SELECT version, name, sha256, bundle_version FROM airlock_migrations ORDER BY version",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].0, "1");
    assert_eq!(recorded[0].1, "0001_add_order_status.sql");
    assert_eq!(
        recorded[0].2,
        sha256_file(
            &work
                .path()
                .join("release/migrations/0001_add_order_status.sql")
        )
    );
    assert_eq!(recorded[1].3, "1.1.0");
    // ... and in sqlx's own table, as sqlx records them, so a service that
    // embeds `sqlx::migrate!` finds nothing to do.
    let sqlx: Vec<(i64, String, bool, Vec<u8>, i64)> = db
        .prepare("SELECT version, description, success, checksum, execution_time FROM _sqlx_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(sqlx.len(), 2);
    assert_eq!(
        (sqlx[0].0, sqlx[0].1.as_str(), sqlx[0].2),
        (1, "add order status", true)
    );
    assert_eq!(
        sqlx[0].3,
        sha2::Sha384::digest(
            std::fs::read(
                work.path()
                    .join("release/migrations/0001_add_order_status.sql")
            )
            .unwrap()
        )
        .to_vec()
    );
    assert!(sqlx[0].4 > 0, "execution_time is written after the commit");
    let totals: i64 = db
        .query_row("SELECT count(*) FROM customer_totals", [], |r| r.get(0))
        .unwrap();
    assert_eq!(totals, 10_000);
    let open: i64 = db
        .query_row(
            "SELECT count(*) FROM orders WHERE status = 'open'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(open, 50_000);

    // The backup holds a checked copy of the database as it was, and the Raft folder.
    let backups: Vec<_> = std::fs::read_dir(node.root.join("backups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(backups.len(), 1);
    let backup = &backups[0];
    assert!(backup.join("backup.json").exists());
    let copy = backup.join("databases/main.sqlite");
    let check: String = Connection::open(&copy)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    assert_eq!(sqlite_dump_hash(&copy), db_rows_before);
    assert!(backup.join("raft/member/wal").is_dir());
    assert!(backup.join("raft/member/snap").is_dir());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.join("backup.json")).unwrap()).unwrap();
    assert!(manifest["raft"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["sha256"].as_str().unwrap().len() == 64));

    // The applier's own state knows the new version.
    let status = airlock_apply(&["--json", "status", "--site", &node.site()]).ok();
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(status["installed"]["version"], "1.1.0");
    assert_eq!(status["installed"]["source"], "state database");
    assert_eq!(status["applies"][0]["outcome"], "ok");

    // Applying the same bundle again does nothing and says so: it is
    // installed (exit 0, not the exit 3 of a forged bundle).
    let before = node.snapshot();
    let again = airlock_apply(&[
        "apply",
        &bundle.display().to_string(),
        "--site",
        &node.site(),
    ]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again
            .stderr
            .contains("etcd-node 1.1.0 is already installed, nothing to do"),
        "{}",
        again.stderr
    );
    assert_eq!(node.snapshot(), before);
}

#[test]
fn failed_health_check_rolls_back_binary_and_database_and_keeps_every_key() {
    let keys = Keys::new(&["release"]);
    let node = EtcdNode::start(&[&keys.public("release")], 1);
    let work = tempfile::tempdir().unwrap();
    let spec = write_release(&work.path().join("release"), "1.1.0", "^1.0.0", true);
    let bundle = build_bundle(&spec, &keys.secret("release"), &work.path().join("out"));
    let before = node.snapshot();

    let started = Instant::now();
    let run = airlock_apply(&[
        "apply",
        &bundle.display().to_string(),
        "--site",
        &node.site(),
    ]);
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "failed upgrade with rollback took {secs:.2}s\n{}",
        run.stderr
    );
    assert_eq!(
        run.code, 4,
        "expected exit code 4 (rolled back):\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("did not become healthy"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("rolled back to 1.0.0"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("is unchanged since the backup"),
        "{}",
        run.stderr
    );

    // Old binary back and running, every key there, database exactly as before.
    assert_eq!(node.snapshot(), before);
    assert!(node.healthy());
    assert_eq!(node.count_keys(), KEY_COUNT);
    let db = Connection::open(node.root.join("node/app.db")).unwrap();
    let has_table: i64 = db
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'airlock_migrations'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(has_table, 0);

    let status = airlock_apply(&["--json", "status", "--site", &node.site()]).ok();
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(status["installed"]["version"], "1.0.0");
    assert_eq!(status["applies"][0]["outcome"], "rolled-back");
}

#[test]
fn writes_after_the_pre_copy_are_in_the_backup_and_the_rollback_keeps_them() {
    // The backup is copied while etcd runs, then brought up to date after
    // the stop (docs/SITE.md, "Backups while the service runs"). The
    // bundle's pre_stop hook writes between the two: 50 keys through etcd's
    // Raft log and a table into the database. The release cannot start, so
    // the apply rolls back from that backup.
    let keys = Keys::new(&["release"]);
    let node = EtcdNode::start(&[&keys.public("release")], 1);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("release");
    let spec = write_release(&dir, "1.1.0", "^1.0.0", true);
    std::fs::create_dir_all(dir.join("hooks")).unwrap();
    std::fs::write(
        dir.join("hooks/write.sh"),
        format!(
            "#!/bin/sh\nset -e\nfor i in $(seq 1 50); do etcdctl --endpoints http://127.0.0.1:{} put key/after-precopy-$i v$i >/dev/null; done\n\
             sqlite3 \"$AIRLOCK_DB_MAIN\" 'CREATE TABLE written_after_precopy(x); INSERT INTO written_after_precopy VALUES (42);'\n",
            node.client_port
        ),
    )
    .unwrap();
    let mut text = std::fs::read_to_string(&spec).unwrap();
    text.push_str("\n[hooks]\npre_stop = \"hooks/write.sh\"\n");
    std::fs::write(&spec, text).unwrap();
    let bundle = build_bundle(&spec, &keys.secret("release"), &work.path().join("out"));

    let run = airlock_apply(&[
        "apply",
        &bundle.display().to_string(),
        "--site",
        &node.site(),
    ]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    // Both backups found the hook's writes and rewrote what they changed.
    let line = |prefix: &str| -> String {
        run.stderr
            .lines()
            .find(|l| l.contains(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in\n{}", run.stderr))
            .to_owned()
    };
    let raft = line("ok backup raft:");
    assert!(
        !raft.contains("pre-copy, 0 compared") && !raft.contains("(0 B rewritten)"),
        "{raft}"
    );
    let database = line("ok backup database:");
    assert!(
        database.contains("compared with the pre-copy")
            && !database.contains("pre-copy, 0 B rewritten"),
        "{database}"
    );
    // The Raft folder the failed start left equals the backup, which holds
    // every write: it is kept, with all 50 keys.
    assert!(
        run.stderr.contains("is unchanged since the backup"),
        "{}",
        run.stderr
    );
    assert!(node.healthy());
    assert_eq!(node.count_keys(), KEY_COUNT + 50);
    // The migrations ran, so the database was restored from its backup:
    // the hook's table is there, the migrations' are not.
    let db = Connection::open(node.root.join("node/app.db")).unwrap();
    let x: i64 = db
        .query_row("SELECT x FROM written_after_precopy", [], |r| r.get(0))
        .unwrap();
    assert_eq!(x, 42);
    let migrated: i64 = db
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'airlock_migrations'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(migrated, 0);
}

/// The new version starts and runs (so the member writes to its Raft log) but
/// reports the wrong version: the Raft data is never restored.
fn new_version_ran_then_failed(rolling_allowed: bool) -> (EtcdNode, Run) {
    let keys = Keys::new(&["release"]);
    let node = EtcdNode::start(&[&keys.public("release")], 1);
    let work = tempfile::tempdir().unwrap();
    let spec = write_release_with(
        &work.path().join("release"),
        "1.1.0",
        "^1.0.0",
        false,
        "1.0.9",
        rolling_allowed,
    );
    let bundle = build_bundle(&spec, &keys.secret("release"), &work.path().join("out"));
    let run = airlock_apply(&[
        "apply",
        &bundle.display().to_string(),
        "--site",
        &node.site(),
    ]);
    eprintln!("{}", run.stderr);
    (node, run)
}

#[test]
fn member_that_ran_the_new_version_keeps_its_raft_data_when_versions_mix() {
    let (node, run) = new_version_ran_then_failed(true);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stderr.contains("reports version 1.0.9, expected 1.1.0"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("kept as it is"), "{}", run.stderr);
    assert!(node.healthy());
    assert_eq!(node.count_keys(), KEY_COUNT);
    assert_eq!(
        std::fs::read_to_string(node.root.join("node/RELEASE")).unwrap(),
        "1.0.0\n"
    );
}

#[test]
fn member_that_ran_a_version_that_cannot_mix_is_left_to_the_operator() {
    let (node, run) = new_version_ran_then_failed(false);
    assert_eq!(
        run.code, 5,
        "expected exit 5 (needs the operator):\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("does not allow mixed versions"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("Safe procedure"), "{}", run.stderr);
    // Binary and database were restored; the old version was not started on the new data.
    assert_eq!(
        std::fs::read_to_string(node.root.join("node/RELEASE")).unwrap(),
        "1.0.0\n"
    );
    assert!(!node.healthy());
    let status = airlock_apply(&["--json", "status", "--site", &node.site()]).ok();
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(status["applies"][0]["outcome"], "needs-operator");
}

/// Reads the rest of a command's output; returns its exit code and its
/// standard output and error together.
fn finish(
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) -> (Option<i32>, String) {
    let stdout: Vec<String> = lines.map(Result::unwrap).collect();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        format!(
            "{}\n{}",
            stdout.join("\n"),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Starts `apply --wait-for-go` and reads its events until it waits; returns
/// the running command and the rest of its output.
fn apply_until_it_waits(
    bundle: &std::path::Path,
    node: &EtcdNode,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(bin("airlock-apply"))
        .args(["--json", "apply"])
        .arg(bundle)
        .args(["--site", &node.site(), "--wait-for-go"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("it ended without waiting: {seen:#?}"))
            .unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["step"] == "wait for go" && event["status"] == "start" {
            break;
        }
        seen.push(event);
    }
    let steps: Vec<&str> = seen.iter().filter_map(|e| e["step"].as_str()).collect();
    for step in ["stage", "pre-copy database", "pre-copy raft"] {
        assert!(
            steps.contains(&step),
            "{step} did not run before the wait: {steps:?}"
        );
    }
    assert!(
        !steps.contains(&"stop"),
        "the service stopped before go: {steps:?}"
    );
    (child, lines)
}

#[test]
fn wait_for_go_stages_and_pre_copies_then_stops_only_on_go() {
    use std::io::Write as _;
    let keys = Keys::new(&["release"]);
    let node = EtcdNode::start(&[&keys.public("release")], 1);
    let work = tempfile::tempdir().unwrap();
    let spec = write_release(&work.path().join("release"), "1.1.0", "^1.0.0", false);
    let bundle = build_bundle(&spec, &keys.secret("release"), &work.path().join("out"));
    let before = node.snapshot();
    let backups = || {
        std::fs::read_dir(node.root.join("backups"))
            .unwrap()
            .count()
    };
    let staged = || {
        std::fs::read_dir(node.root.join("state/staging"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let backups_before = backups();

    // While it waits, the service runs the old version, untouched.
    let (mut child, lines) = apply_until_it_waits(&bundle, &node);
    assert!(node.healthy());
    assert_eq!(node.snapshot(), before);
    assert_eq!(
        staged(),
        1,
        "the staging folder is not there while it waits"
    );
    // Anything but `go`: the apply ends before the stop, the node unchanged.
    child.stdin.take().unwrap().write_all(b"stop\n").unwrap();
    let (code, output) = finish(child, lines);
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("the rolling upgrade's coordinator did not say go (it sent `stop`): the service was not stopped"),
        "{output}"
    );
    assert!(node.healthy());
    assert_eq!(node.snapshot(), before);
    assert_eq!(staged(), 0, "the staging folder was left behind");
    assert_eq!(backups(), backups_before, "a pre-copy was left behind");

    // The end of the input (a coordinator that is gone) is no go either.
    let (mut child, lines) = apply_until_it_waits(&bundle, &node);
    drop(child.stdin.take());
    let (code, output) = finish(child, lines);
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("(it sent the end of its input)"),
        "{output}"
    );
    assert_eq!(node.snapshot(), before);

    // `go`: the apply goes on from where it waited and installs 1.1.0.
    let (mut child, lines) = apply_until_it_waits(&bundle, &node);
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let rest: Vec<serde_json::Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: Vec<&str> = rest.iter().filter_map(|e| e["step"].as_str()).collect();
    assert_eq!(steps.first(), Some(&"wait for go"), "{steps:?}");
    assert!(
        !steps.contains(&"stage"),
        "it staged again after go: {steps:?}"
    );
    assert!(
        steps.contains(&"stop") && steps.contains(&"health"),
        "{steps:?}"
    );
    assert_eq!(
        std::fs::read_to_string(node.root.join("node/RELEASE")).unwrap(),
        "1.1.0\n"
    );
    assert!(node.healthy());
    assert_eq!(node.count_keys(), KEY_COUNT);
}
