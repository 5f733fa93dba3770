//! Crash safety: an apply killed at any step ends, after `resume`, fully on
//! the old version or fully on the new one; plus plan, rollback, backups,
//! history, signals, the lock and a full disk.

use std::fs;
use std::path::PathBuf;

use rusqlite::Connection;

use crate::harness::*;

/// What the node looks like after the dust settles.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    Old,
    New,
}

struct Fixture {
    node: EtcdNode,
    bundle: PathBuf,
    old_binary: String,
    new_binary: String,
    old_db: String,
    new_db: String,
    _work: tempfile::TempDir,
    _keys: Keys,
}

fn fixture(rolling_allowed: bool) -> Fixture {
    let keys = Keys::new(&["release"]);
    let node = EtcdNode::start(&[&keys.public("release")], 1);
    let work = tempfile::tempdir().unwrap();
    let spec = write_release_with(
        &work.path().join("release"),
        "1.1.0",
        "^1.0.0",
        false,
        "1.1.0",
        rolling_allowed,
    );
    let bundle = build_bundle(&spec, &keys.secret("release"), &work.path().join("out"));
    let db = node.root.join("node/app.db");
    Fixture {
        old_binary: sha256_file(&node.root.join("node/bin/etcd")),
        new_binary: sha256_file(&work.path().join("release/etcd")),
        old_db: sqlite_dump_hash(&db),
        new_db: migrated_content_hash(&db, &work.path().join("release/migrations")),
        node,
        bundle,
        _work: work,
        _keys: keys,
    }
}

impl Fixture {
    fn bundle(&self) -> String {
        self.bundle.display().to_string()
    }

    /// Asserts the node is wholly on one side, healthy, with every key, and returns the side.
    fn settled(&self) -> Side {
        let node = &self.node;
        let binary = sha256_file(&node.root.join("node/bin/etcd"));
        let release = fs::read_to_string(node.root.join("node/RELEASE")).unwrap();
        let db = node.root.join("node/app.db");
        let side = if binary == self.new_binary {
            assert_eq!(release, "1.1.0\n", "new binary with old release file");
            assert_eq!(
                sqlite_content_hash(&db),
                self.new_db,
                "new binary but the database is not migrated"
            );
            let n: i64 = Connection::open(&db)
                .unwrap()
                .query_row("SELECT count(*) FROM airlock_migrations", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 2);
            Side::New
        } else {
            assert_eq!(binary, self.old_binary, "the binary is neither old nor new");
            assert_eq!(release, "1.0.0\n", "old binary with new release file");
            assert_eq!(
                sqlite_dump_hash(&db),
                self.old_db,
                "old binary but the database changed"
            );
            Side::Old
        };
        assert!(node.healthy(), "etcd is not healthy; log:\n{}", node.log());
        assert_eq!(node.count_keys(), KEY_COUNT, "keys were lost");
        let status = airlock_apply(&["--json", "status", "--site", &node.site()]).ok();
        let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
        assert!(
            status["interrupted_apply"].is_null(),
            "an apply is still open: {status}"
        );
        let want = if side == Side::New { "1.1.0" } else { "1.0.0" };
        assert_eq!(status["installed"]["version"], want, "{status}");
        side
    }
}

/// Kills apply with SIGKILL at the `nth` event `step`/`status`, runs resume,
/// and checks the node ends on one side. `expect` is the side it must end
/// on, or `None` when either is right.
fn kill_then_resume(step: &str, status: &str, nth: usize, expect: Option<Side>) {
    let f = fixture(true);
    let site = f.node.site();
    let (events, code, stderr) =
        apply_with_signal(&["apply", &f.bundle(), "--site", &site], "KILL", |e, n| {
            e.step == step && e.status == status && n == nth
        });
    assert!(
        events.iter().any(|e| e.step == step && e.status == status),
        "apply never reached `{step} {status}` (exit {code}):\n{stderr}"
    );
    if step != "commit" {
        assert_eq!(code, -1, "apply was not killed (exit {code}):\n{stderr}");
        // Another apply refuses while this one is unfinished. (Killed right
        // after the lock, the apply had not recorded anything yet: nothing to refuse.)
        if step != "lock" {
            let again = airlock_apply(&["apply", &f.bundle(), "--site", &site]);
            assert_eq!(again.code, 7, "{}", again.stderr);
            assert!(
                again.stderr.contains("airlock-apply resume"),
                "{}",
                again.stderr
            );
        }
    }
    let resumed = airlock_apply(&["resume", "--site", &site]);
    eprintln!(
        "killed after `{step} {status}` #{nth}; resume exit {}:\n{}",
        resumed.code, resumed.stderr
    );
    assert!(
        matches!(resumed.code, 0 | 4),
        "resume failed:\n{}",
        resumed.stderr
    );
    let side = f.settled();
    if let Some(expect) = expect {
        assert_eq!(side, expect, "killed after `{step} {status}`");
    }
    eprintln!(
        "KILL POINT `{step} {status}` #{nth}: ends on {side:?} (resume exit {})",
        resumed.code
    );
    // A second resume has nothing to do.
    let again = airlock_apply(&["resume", "--site", &site]).ok();
    assert!(again.stderr.contains("nothing to do"), "{}", again.stderr);
}

macro_rules! kill_points {
    ($($name:ident: $step:expr, $status:expr, $nth:expr, $expect:expr;)*) => {$(
        #[test]
        fn $name() {
            kill_then_resume($step, $status, $nth, $expect);
        }
    )*};
}

kill_points! {
    kill_after_lock: "lock", "ok", 1, Some(Side::Old);
    kill_after_stage: "stage", "ok", 1, Some(Side::Old);
    kill_after_stop: "stop", "ok", 1, Some(Side::Old);
    kill_after_database_backup: "backup database", "ok", 1, Some(Side::Old);
    kill_after_raft_backup: "backup raft", "ok", 1, Some(Side::Old);
    kill_after_config_backup: "backup config", "ok", 1, Some(Side::Old);
    kill_after_binary_backup: "backup installed", "ok", 1, Some(Side::Old);
    kill_after_backup_complete: "backup", "ok", 1, Some(Side::Old);
    kill_after_binary_install: "install", "ok", 1, Some(Side::Old);
    kill_after_first_migration: "migrate", "ok", 1, Some(Side::Old);
    kill_after_second_migration: "migrate", "ok", 2, Some(Side::Old);
    kill_after_start: "start", "ok", 1, Some(Side::Old);
    kill_after_health: "health", "ok", 1, None;
    kill_after_healthy_recorded: "healthy", "start", 1, Some(Side::New);
    kill_after_commit: "commit", "ok", 1, Some(Side::New);
}

/// The newest journal row of apply #1: its entry (JSON) and state.
fn last_journal_row(f: &Fixture) -> (serde_json::Value, String) {
    let conn = Connection::open(f.node.root.join("state/airlock-state.sqlite")).unwrap();
    let (entry, state): (String, String) = conn
        .query_row(
            "SELECT entry, state FROM journal WHERE apply_id = 1 ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    (serde_json::from_str(&entry).unwrap(), state)
}

/// Runs apply with the fail point after the journal row of `kind` set to
/// pause, kills it with SIGKILL there (the row is written, the step's action
/// never ran), resumes with the normal binary, and checks the node ends on
/// `expect`.
fn kill_between_journal_row_and_action(kind: &str, label: &str, expect: Side) {
    let f = fixture(true);
    let site = f.node.site();
    let failpoint = format!("after-journal-{}=pause", label.replace(' ', "-"));
    let (events, code, stderr) = run_with_signal(
        &failpoints_bin(),
        &[("FAILPOINTS", &failpoint)],
        &["apply", &f.bundle(), "--site", &site],
        "KILL",
        |e, n| {
            let here = e.step == label && e.status == "start" && n == 1;
            if here {
                // Let it reach the fail point, right after the event.
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            here
        },
    );
    assert_eq!(code, -1, "apply was not killed (exit {code}):\n{stderr}");
    assert!(
        !events.iter().any(|e| e.step == label && e.status == "ok"),
        "the `{label}` step finished before the kill"
    );
    let (entry, state) = last_journal_row(&f);
    assert_eq!(entry["step"]["kind"], kind, "{entry}");
    assert_eq!(
        state, "begun",
        "the last journal row is not the announced step"
    );
    let resumed = airlock_apply(&["resume", "--site", &site]);
    eprintln!(
        "killed between the journal row of `{label}` and its action; resume exit {}:\n{}",
        resumed.code, resumed.stderr
    );
    assert!(matches!(resumed.code, 0 | 4), "{}", resumed.stderr);
    assert_eq!(f.settled(), expect, "killed before `{label}` acted");
}

macro_rules! journaled_kill_points {
    ($($name:ident: $kind:expr, $label:expr, $expect:expr;)*) => {$(
        #[test]
        fn $name() {
            kill_between_journal_row_and_action($kind, $label, $expect);
        }
    )*};
}

journaled_kill_points! {
    kill_between_journal_and_stop: "stop", "stop", Side::Old;
    kill_between_journal_and_install: "install", "install", Side::Old;
    kill_between_journal_and_migrate: "migrate", "migrate", Side::Old;
    kill_between_journal_and_start: "start", "start", Side::Old;
    kill_between_journal_and_commit: "commit", "commit", Side::New;
}

#[test]
fn a_resume_that_dies_twice_at_the_same_place_hands_the_node_to_the_operator() {
    let f = fixture(true);
    let site = f.node.site();
    // An apply killed after its first migration: undoing it restores the database.
    let (_, code, stderr) =
        apply_with_signal(&["apply", &f.bundle(), "--site", &site], "KILL", |e, n| {
            e.step == "migrate" && e.status == "ok" && n == 1
        });
    assert_eq!(code, -1, "{stderr}");
    // Two resumes die (a panic, as a crash would) right after journaling the
    // restore of the database.
    for attempt in 1..=2 {
        let died = airlock_apply_failpoints(
            "after-journal-undo-restore-database=panic",
            &["resume", "--site", &site],
        );
        eprintln!(
            "resume attempt {attempt}: exit {}\n{}",
            died.code, died.stderr
        );
        assert_eq!(died.code, 101, "resume did not die:\n{}", died.stderr);
    }
    // The third does not try again: exit 5, and the apply is closed.
    let third = airlock_apply(&["resume", "--site", &site]);
    eprintln!("{}", third.stderr);
    assert_eq!(third.code, 5, "{}", third.stderr);
    assert!(
        third
            .stderr
            .contains("resume was interrupted twice at `restore database main"),
        "{}",
        third.stderr
    );
    assert!(third.stderr.contains("help:"), "{}", third.stderr);
    let status = airlock_apply(&["--json", "status", "--site", &site]).ok();
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert!(status["interrupted_apply"].is_null(), "{status}");
    assert_eq!(status["applies"][0]["outcome"], "needs-operator");
}

#[test]
fn plan_prints_the_steps_and_changes_nothing() {
    let f = fixture(true);
    let before = (
        f.node.snapshot(),
        f.node.file_snapshot(),
        sha256_tree(&f.node.root.join("backups")),
    );
    let state_existed = f.node.root.join("state/airlock-state.sqlite").exists();
    let run = airlock_apply(&["plan", &f.bundle(), "--site", &f.node.site()]).ok();
    eprintln!("{}", run.stdout);
    for want in [
        "etcd-node 1.0.0 -> 1.1.0",
        "backup database",
        "backup raft",
        "bin/etcd -> ",
        "main 1 `add order status` (sqlx, in a transaction)",
        "main 2 `customer totals` (sqlx, in a transaction)",
        "migrate main: sqlx rules (named in the bundle), foreign keys on, history in _sqlx_migrations; 2 of 2 pending",
        "MiB",
        "disk: ",
        "fits",
    ] {
        assert!(
            run.stdout.contains(want),
            "plan lacks `{want}`:\n{}",
            run.stdout
        );
    }
    let json = airlock_apply(&["--json", "plan", &f.bundle(), "--site", &f.node.site()]).ok();
    let plan: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(plan["to"], "1.1.0");
    assert!(plan["space"][0]["available"].as_u64().unwrap() > 0);
    let after = (
        f.node.snapshot(),
        f.node.file_snapshot(),
        sha256_tree(&f.node.root.join("backups")),
    );
    assert_eq!(before, after, "plan changed the node");
    assert_eq!(
        f.node.root.join("state/airlock-state.sqlite").exists(),
        state_existed
    );
}

#[test]
fn rollback_after_a_successful_apply_restores_the_old_version_and_database() {
    let f = fixture(true);
    let site = f.node.site();
    airlock_apply(&["apply", &f.bundle(), "--site", &site]).ok();
    assert_eq!(f.settled(), Side::New);
    // Without --yes and without a terminal there is no confirmation: nothing changes.
    let refused = airlock_apply(&["rollback", "--site", &site]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("pass --yes"), "{}", refused.stderr);
    assert_eq!(f.settled(), Side::New);
    let run = airlock_apply(&["rollback", "--site", &site, "--yes"]);
    eprintln!("{}", run.stderr);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(f.settled(), Side::Old);
    // Only once: the installed version is no longer what the last apply installed.
    let again = airlock_apply(&["rollback", "--site", &site, "--yes"]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    // Applying again works after a rollback.
    airlock_apply(&["apply", &f.bundle(), "--site", &site]).ok();
    assert_eq!(f.settled(), Side::New);
}

#[test]
fn rollback_refuses_to_restore_raft_data_of_a_version_that_cannot_mix() {
    let f = fixture(false);
    let site = f.node.site();
    airlock_apply(&["apply", &f.bundle(), "--site", &site]).ok();
    assert_eq!(f.settled(), Side::New);
    let before = f.node.snapshot();
    let run = airlock_apply(&["rollback", "--site", &site, "--yes"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("Safe procedure"), "{}", run.stderr);
    assert_eq!(f.node.snapshot(), before);
    assert_eq!(f.settled(), Side::New);
}

#[test]
fn history_records_every_action_and_detects_tampering() {
    let f = fixture(true);
    let site = f.node.site();
    airlock_apply(&["verify", &f.bundle(), "--site", &site]); // no state yet: not recorded
    airlock_apply(&["apply", &f.bundle(), "--site", &site]).ok();
    airlock_apply(&["verify", &f.bundle(), "--site", &site]); // refused: already installed
    airlock_apply(&["rollback", "--site", &site, "--yes"]).ok();
    let history = airlock_apply(&["--json", "history", "--site", &site]).ok();
    let history: serde_json::Value = serde_json::from_str(history.stdout.trim()).unwrap();
    let actions: Vec<(&str, &str)> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [("apply", "ok"), ("verify", "refused"), ("rollback", "ok")]
    );
    let first = &history["entries"][0];
    assert_eq!(first["version"], "1.1.0");
    assert_eq!(
        first["bundle_sha256"].as_str().unwrap(),
        sha256_file(&f.bundle)
    );
    assert!(!first["signers"].as_str().unwrap().is_empty());
    assert!(!first["user"].as_str().unwrap().is_empty());
    airlock_apply(&["history", "--site", &site, "--check"]).ok();

    let db = f.node.root.join("state/airlock-state.sqlite");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "DROP TRIGGER audit_no_update; UPDATE audit SET outcome = 'ok' WHERE id = 2;",
    )
    .unwrap();
    let check = airlock_apply(&["history", "--site", &site, "--check"]);
    assert_eq!(check.code, 8, "{}", check.stderr);
    assert!(
        check
            .stderr
            .contains("entry 2's hash does not match its content"),
        "{}",
        check.stderr
    );
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS audit_no_update; UPDATE audit SET outcome = 'refused' WHERE id = 2;
         DROP TRIGGER IF EXISTS audit_no_delete; DELETE FROM audit WHERE id = 3;",
    )
    .unwrap();
    drop(conn);
    let check = airlock_apply(&["history", "--site", &site, "--check"]);
    assert_eq!(check.code, 8, "{}", check.stderr);
    assert!(
        check.stderr.contains("the newest entry should be 3"),
        "{}",
        check.stderr
    );
}

#[test]
fn backups_are_listed_verified_and_pruned() {
    let f = fixture(true);
    let site = f.node.site();
    airlock_apply(&["apply", &f.bundle(), "--site", &site]).ok();
    let list = airlock_apply(&["--json", "backups", "list", "--site", &site]).ok();
    let list: serde_json::Value = serde_json::from_str(list.stdout.trim()).unwrap();
    let rows = &list["backups"];
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["from"], "1.0.0");
    assert_eq!(rows[0]["to"], "1.1.0");
    assert_eq!(rows[0]["intact"], true);
    assert!(
        rows[0]["size"].as_u64().unwrap() > 60 << 20,
        "the backup holds the Raft data"
    );
    airlock_apply(&["backups", "verify", "--site", &site]).ok();

    // Damage one copy: verify names it and fails; rollback refuses to use it.
    let dir = PathBuf::from(rows[0]["dir"].as_str().unwrap());
    let copy = dir.join("databases/main.sqlite");
    let mut bytes = fs::read(&copy).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&copy, bytes).unwrap();
    let verify = airlock_apply(&["backups", "verify", "--site", &site]);
    assert_eq!(verify.code, 8, "{}", verify.stderr);
    assert!(
        verify
            .stderr
            .contains("databases/main.sqlite` does not match"),
        "{}",
        verify.stderr
    );
    let rollback = airlock_apply(&["rollback", "--site", &site, "--yes"]);
    assert_eq!(rollback.code, 1, "{}", rollback.stderr);
    assert!(
        rollback.stderr.contains("is damaged"),
        "{}",
        rollback.stderr
    );
    assert_eq!(f.settled(), Side::New);

    let prune = airlock_apply(&["backups", "prune", "--site", &site, "--keep", "1"]).ok();
    assert!(prune.stdout.contains("removed 0"), "{}", prune.stdout);
}

#[test]
fn sigterm_finishes_the_step_then_rolls_back() {
    let f = fixture(true);
    let site = f.node.site();
    let (events, code, stderr) = apply_with_signal(
        &["apply", &f.bundle(), "--site", &site],
        "TERM",
        // A second signal once the first was obeyed (two at once would merge into one).
        |e, _| e.status == "start" && (e.step == "backup database" || e.step == "rollback"),
    );
    eprintln!("{stderr}");
    assert_eq!(code, 4, "expected exit 4 (rolled back):\n{stderr}");
    assert!(
        stderr.contains("received SIGTERM; finishing the current step"),
        "{stderr}"
    );
    assert!(stderr.contains("received SIGTERM again"), "{stderr}");
    assert!(stderr.contains("interrupted by a signal"), "{stderr}");
    // The database backup that was running when the signal came finished first.
    assert!(events
        .iter()
        .any(|e| e.step == "backup database" && e.status == "ok"));
    assert_eq!(f.settled(), Side::Old);
}

#[test]
fn a_running_apply_holds_the_lock() {
    let f = fixture(true);
    let site = f.node.site();
    let site2 = site.clone();
    let mut second = None;
    let (_, code, stderr) =
        apply_with_signal(&["apply", &f.bundle(), "--site", &site], "CONT", |e, _| {
            if e.step == "stop" && e.status == "ok" {
                second = Some(airlock_apply(&["apply", &f.bundle(), "--site", &site2]));
                true
            } else {
                false
            }
        });
    assert_eq!(code, 0, "{stderr}");
    let second = second.expect("the first apply reached the stop");
    assert_eq!(second.code, 6, "{}", second.stderr);
    assert!(
        second.stderr.contains("is running: lock"),
        "{}",
        second.stderr
    );
    assert!(second.stderr.contains("pid "), "{}", second.stderr);
    assert_eq!(f.settled(), Side::New);
}

#[test]
fn a_full_backup_disk_is_refused_before_anything_changes() {
    let f = fixture(true);
    let site = f.node.site();
    let _small = Tmpfs::mount(&f.node.root.join("backups"), 32);
    let before = (f.node.snapshot(), f.node.file_snapshot());
    let run = airlock_apply(&["apply", &f.bundle(), "--site", &site]);
    eprintln!("{}", run.stderr);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("backups need"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&f.node.root.join("backups").display().to_string()),
        "{}",
        run.stderr
    );
    assert_eq!((f.node.snapshot(), f.node.file_snapshot()), before);
    assert_eq!(f.settled(), Side::Old);
}

#[test]
fn a_disk_that_fills_during_the_backup_stops_the_apply_before_the_service_and_names_the_folder() {
    let f = fixture(true);
    let site = f.node.site();
    let backups = f.node.root.join("backups");
    let _fs = Tmpfs::mount(&backups, 400);
    let before = f.node.snapshot();
    // Once the space check of the backup folder (the second one: staging is
    // on another filesystem) passed, something else fills that disk.
    let (_, code, stderr) =
        apply_with_signal(&["apply", &f.bundle(), "--site", &site], "CONT", |e, n| {
            if e.step == "disk space" && e.status == "ok" && n == 2 {
                let filler = backups.join("filler");
                let _ = std::process::Command::new("dd")
                    .args([
                        "if=/dev/zero",
                        &format!("of={}", filler.display()),
                        "bs=1M",
                        "count=400",
                    ])
                    .stderr(std::process::Stdio::null())
                    .status();
                true
            } else {
                false
            }
        });
    eprintln!("{stderr}");
    // The backup is copied before the stop (docs/SITE.md, "Backups while
    // the service runs"): the full disk stops the apply while the service
    // still runs, and nothing needs rolling back.
    assert_eq!(code, 1, "expected a failure before the stop:\n{stderr}");
    assert!(stderr.contains("pre-copy"), "{stderr}");
    assert!(stderr.contains("the filesystem is full"), "{stderr}");
    assert!(stderr.contains(&backups.display().to_string()), "{stderr}");
    assert!(stderr.contains("nothing on the node changed"), "{stderr}");
    assert_eq!(f.node.snapshot(), before);
    assert_eq!(f.settled(), Side::Old);
}
