//! Hardened for the field: an apply survives its session and its pipes
//! going away, `status` tells a running apply from an interrupted one, a
//! site takes only its own product, and unsigned input costs bounded memory.

use std::fs;
use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Command, Stdio};

use crate::demo::Demo;
use crate::harness::*;

/// Asserts the demo node runs 1.1.0, healthy, recorded, with nothing left to resume.
fn ends_on_the_new_version(demo: &Demo) {
    assert_eq!(
        fs::read_to_string(demo.site_dir().join("node/RELEASE")).unwrap(),
        "1.1.0\n"
    );
    assert!(demo.healthy(), "the new version is not healthy");
    let status = airlock_apply(&["--json", "status", "--site", &demo.site()]).ok();
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(status["installed"]["version"], "1.1.0", "{status}");
    assert!(status["interrupted_apply"].is_null(), "{status}");
    assert!(status.get("running_apply").is_none(), "{status}");
    // The apply's log file has the whole run, to its end.
    let log = fs::read_to_string(demo.site_dir().join("state/logs/apply-1.log")).unwrap();
    assert!(log.contains("ok commit: demo 1.1.0 installed"), "{log}");
    assert!(log.contains("ok done: 1.0.0 -> 1.1.0"), "{log}");
}

#[test]
fn an_apply_whose_stdout_closes_after_its_first_line_completes() {
    let demo = Demo::start();
    let mut child = Command::new(bin("airlock-apply"))
        .args(["--json", "apply", &demo.bundle(), "--site", &demo.site()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Like `airlock-apply ... | head -1`: one line, then the pipe closes.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("\"step\":\"lock\""), "{first}");
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(0), "{stderr}");
    ends_on_the_new_version(&demo);
}

#[test]
fn an_apply_whose_session_hangs_up_completes() {
    let demo = Demo::start();
    let mut child = Command::new(bin("airlock-apply"))
        .args(["--json", "apply", &demo.bundle(), "--site", &demo.site()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        let line = line.unwrap();
        if line.contains("\"step\":\"stop\"") && line.contains("\"status\":\"ok\"") {
            // The SSH session drops: SIGHUP, and the terminal is gone.
            Command::new("kill")
                .args(["-HUP", &child.id().to_string()])
                .status()
                .unwrap();
            break;
        }
    }
    drop(child.stderr.take());
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(0), "the apply did not survive SIGHUP");
    ends_on_the_new_version(&demo);
}

#[test]
fn status_tells_a_running_apply_from_an_interrupted_one() {
    let demo = Demo::start();
    let site = demo.site();
    let (_, code, _) = run_with_signal(
        &failpoints_bin(),
        &[("FAILPOINTS", "after-journal-install=pause")],
        &["apply", &demo.bundle(), "--site", &site],
        "KILL",
        |e, _| {
            if e.step == "install" && e.status == "start" {
                // Paused there, alive, holding the lock.
                std::thread::sleep(std::time::Duration::from_millis(300));
                let status = airlock_apply(&["--json", "status", "--site", &site]).ok();
                let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
                assert!(status["interrupted_apply"].is_null(), "{status}");
                assert_eq!(status["running_apply"]["id"], 1, "{status}");
                let text = airlock_apply(&["status", "--site", &site]).ok();
                assert!(text.stdout.contains("RUNNING apply #1"), "{}", text.stdout);
                assert!(!text.stdout.contains("INTERRUPTED"), "{}", text.stdout);
                true
            } else {
                false
            }
        },
    );
    assert_eq!(code, -1);
    // Killed: now it is interrupted, and `resume` is what to run.
    let text = airlock_apply(&["status", "--site", &site]).ok();
    assert!(
        text.stdout.contains("INTERRUPTED apply #1"),
        "{}",
        text.stdout
    );
    let resumed = airlock_apply(&["resume", "--site", &site]);
    assert_eq!(resumed.code, 4, "{}", resumed.stderr);
}

#[test]
fn a_bundle_of_another_product_is_refused_and_nothing_changes() {
    let demo = Demo::start();
    let site = demo.site();
    let rename = |release: &std::path::Path| {
        let spec = release.join("bundle.toml");
        let text = fs::read_to_string(&spec).unwrap();
        fs::write(&spec, text.replace("name = \"demo\"", "name = \"billing\"")).unwrap();
    };
    let billing = demo.release("1.1.0", rename);
    let before = sha256_tree(&demo.site_dir().join("node"));
    for command in ["verify", "plan", "apply"] {
        let run = airlock_apply(&[command, &billing, "--site", &site]);
        assert_eq!(run.code, 3, "{command}: {}", run.stderr);
        assert!(
            run.stderr
                .contains("it is a bundle of `billing`, but this node runs `demo` (its site profile says product = \"demo\")"),
            "{command}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains("help: use the `demo` bundle"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(sha256_tree(&demo.site_dir().join("node")), before);
    assert!(!demo.site_dir().join("backups").exists());

    // Without `product`, the installed release's name decides.
    demo.edit_site(|s| s.replace("product = \"demo\"", ""));
    airlock_apply(&["apply", &demo.bundle(), "--site", &site]).ok();
    let billing_next = demo.release("1.2.0", rename);
    let run = airlock_apply(&["apply", &billing_next, "--site", &site]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "it is a bundle of `billing`, but this node runs `demo` (it runs demo 1.1.0)"
        ),
        "{}",
        run.stderr
    );
    let status = airlock_apply(&["--json", "status", "--site", &site]).ok();
    assert!(
        status.stdout.contains("\"version\":\"1.1.0\""),
        "{}",
        status.stdout
    );
}

#[test]
fn applying_the_installed_version_does_nothing_unless_reinstall() {
    let demo = Demo::start();
    let site = demo.site();
    airlock_apply(&["apply", &demo.bundle(), "--site", &site]).ok();
    let backups = || {
        fs::read_dir(demo.site_dir().join("backups"))
            .unwrap()
            .count()
    };
    assert_eq!(backups(), 1);
    let again = airlock_apply(&["apply", &demo.bundle(), "--site", &site]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again
            .stderr
            .contains("demo 1.1.0 is already installed, nothing to do"),
        "{}",
        again.stderr
    );
    assert_eq!(backups(), 1, "a no-op apply made a backup");
    let reinstalled = airlock_apply(&["apply", &demo.bundle(), "--site", &site, "--reinstall"]);
    assert_eq!(reinstalled.code, 0, "{}", reinstalled.stderr);
    assert!(
        reinstalled
            .stderr
            .contains("ok commit: demo 1.1.0 installed"),
        "{}",
        reinstalled.stderr
    );
    assert_eq!(backups(), 2);
    assert!(demo.healthy());
}

/// Writes a file that starts with a container header of `kind` declaring
/// `size` bytes, named `name`, followed by `size` bytes (a sparse file).
fn crafted_container(path: &std::path::Path, kind: tar::EntryType, name: &[u8], size: u64) {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    header.set_cksum();
    let file = fs::File::create(path).unwrap();
    std::io::Write::write_all(&mut &file, header.as_bytes()).unwrap();
    file.set_len(512 + size.div_ceil(512) * 512 + 1024).unwrap();
}

#[test]
fn a_256_mib_long_name_is_refused_in_bounded_memory_with_a_short_error() {
    let demo = Demo::start();
    let site = demo.site();
    // A state database first, to see that the audit log does not grow.
    airlock_apply(&["apply", &demo.bundle(), "--site", &site]).ok();
    let db = demo.site_dir().join("state/airlock-state.sqlite");
    let db_before = fs::metadata(&db).unwrap().len();
    let bundle = demo.root.join("long-name.airlock");
    crafted_container(
        &bundle,
        tar::EntryType::GNULongName,
        b"././@LongLink",
        256 << 20,
    );
    for command in ["verify", "apply"] {
        let out = Command::new("/usr/bin/time")
            .args(["-f", "max-rss-kib %M"])
            .arg(bin("airlock-apply"))
            .args([command, &bundle.display().to_string(), "--site", &site])
            .output()
            .expect("run /usr/bin/time (Debian package `time`; tests/run.sh installs it)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{command}: {stderr}");
        let rss: u64 = stderr
            .lines()
            .find_map(|l| l.strip_prefix("max-rss-kib "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no max-rss line in {stderr}"));
        eprintln!("{command} of a 256 MiB long name: max RSS {rss} KiB");
        assert!(rss < 64 * 1024, "{command} used {rss} KiB");
        let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap();
        assert!(error.len() < 400, "{error}");
        assert!(
            error.contains("is a GNU long-name record of 268435456 bytes"),
            "{error}"
        );
    }
    let history = airlock_apply(&["--json", "history", "--site", &site]).ok();
    assert!(
        history.stdout.len() < 16 * 1024,
        "{} bytes",
        history.stdout.len()
    );
    assert!(fs::metadata(&db).unwrap().len() < db_before + 256 * 1024);
}

#[test]
fn a_name_with_terminal_escapes_cannot_paint_over_the_refusal() {
    let demo = Demo::start();
    let bundle = demo.root.join("escapes.airlock");
    crafted_container(
        &bundle,
        tar::EntryType::Regular,
        b"\x1b[1A\x1b[2K\r[   0.06s]     ok verify",
        1,
    );
    for json in [false, true] {
        let mut args = vec!["verify", bundle.to_str().unwrap(), "--site"];
        let site = demo.site();
        args.push(&site);
        if json {
            args.insert(0, "--json");
        }
        let run = airlock_apply(&args);
        assert_eq!(run.code, 3, "{}", run.stderr);
        for text in [&run.stderr, &run.stdout] {
            assert!(
                !text.contains('\x1b') && !text.contains('\r'),
                "raw escapes in {text:?}"
            );
        }
        assert!(run.stderr.contains("\\u{1b}[1A"), "{}", run.stderr);
    }
}

/// The files an apply writes beside their targets in `dir`: staged copies
/// (`.NAME.airlock-ID`) and temporary files of interrupted writes
/// (`.NAME.XXXXXX.airlock-tmp`).
fn temporary_files(dir: &std::path::Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n.contains(".airlock-"))
        .collect()
}

#[test]
fn a_kill_during_an_install_then_resume_leaves_no_temporary_file() {
    let demo = Demo::start();
    let site = demo.site();
    let bin_dir = demo.site_dir().join("node/bin");
    let mut seen = Vec::new();
    let (_, code, stderr) = run_with_signal(
        &failpoints_bin(),
        &[("FAILPOINTS", "install-before-rename=pause")],
        &["apply", &demo.bundle(), "--site", &site],
        "KILL",
        |e, _| {
            if e.step == "install" && e.status == "start" {
                // The new binary is staged beside the old one, not renamed yet.
                std::thread::sleep(std::time::Duration::from_millis(500));
                seen = temporary_files(&bin_dir);
                true
            } else {
                false
            }
        },
    );
    assert_eq!(code, -1, "{stderr}");
    assert_eq!(
        seen,
        [".demo-service.airlock-1"],
        "not staged beside its target"
    );
    let resumed = airlock_apply(&["resume", "--site", &site]);
    assert_eq!(resumed.code, 4, "{}", resumed.stderr);
    assert!(
        resumed.stderr.contains("staged beside their targets"),
        "{}",
        resumed.stderr
    );
    assert_eq!(temporary_files(&bin_dir), Vec::<String>::new());
    assert_eq!(
        fs::read_to_string(demo.site_dir().join("node/RELEASE")).unwrap(),
        "1.0.0\n"
    );
    assert!(demo.healthy());
}

/// Runs `airlock-apply ARGS` as the user `nobody` (setpriv, util-linux).
fn airlock_apply_as_nobody(args: &[&str]) -> Run {
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(bin("airlock-apply"))
        .args(args)
        .output()
        .expect("run setpriv (util-linux)");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_permission_problem_is_reported_as_one_never_as_damage() {
    use std::os::unix::fs::PermissionsExt as _;
    let demo = Demo::start();
    let site = demo.site();
    airlock_apply(&["apply", &demo.bundle(), "--site", &site]).ok();
    // Another user may read the profile and its keys, not the state or backups.
    let open = |p: &std::path::Path, mode| {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap()
    };
    open(&demo.root, 0o755);
    open(&demo.site_dir(), 0o755);
    open(&demo.site_dir().join("state"), 0o700);
    open(&demo.site_dir().join("backups"), 0o700);
    let check = airlock_apply_as_nobody(&["history", "--site", &site, "--check"]);
    assert_eq!(check.code, 1, "{}", check.stderr);
    assert!(
        check.stderr.contains("Permission denied"),
        "{}",
        check.stderr
    );
    assert!(check.stderr.contains("state"), "{}", check.stderr);
    assert!(!check.stderr.contains("does not match"), "{}", check.stderr);
    // The state folder readable again (the site's trust in force is read
    // from it), the backups not.
    open(&demo.site_dir().join("state"), 0o755);
    let list = airlock_apply_as_nobody(&["backups", "list", "--site", &site]);
    assert_eq!(list.code, 1, "{}", list.stderr);
    assert!(list.stderr.contains("Permission denied"), "{}", list.stderr);
    assert!(list.stderr.contains("backups"), "{}", list.stderr);
    assert!(!list.stdout.contains("no backups"), "{}", list.stdout);
    // A backup copy that cannot be read is not a damaged backup.
    open(&demo.site_dir().join("backups"), 0o755);
    let backup = fs::read_dir(demo.site_dir().join("backups"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    open(&backup, 0o755);
    let verify = airlock_apply_as_nobody(&["backups", "verify", "--site", &site]);
    assert_eq!(verify.code, 1, "{}", verify.stderr);
    assert!(
        verify.stderr.contains("Permission denied"),
        "{}",
        verify.stderr
    );
    assert!(!verify.stderr.contains("damaged"), "{}", verify.stderr);
}

#[test]
fn the_audit_log_names_the_real_user_not_user_from_the_environment() {
    let demo = Demo::start();
    let site = demo.site();
    airlock_apply(&["apply", &demo.bundle(), "--site", &site]).ok();
    let run = Command::new(bin("airlock-apply"))
        .args(["verify", &demo.bundle(), "--site", &site])
        .env("USER", "mallory")
        .env("LOGNAME", "mallory")
        .env("SUDO_USER", "alice")
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let run = airlock_apply(&["--json", "history", "--site", &site]).ok();
    let history: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let rows = &history["entries"];
    let user = rows[1]["user"].as_str().unwrap();
    assert_eq!(user, "root (uid 0) via sudo by alice", "{rows}");
    assert!(!run.stdout.contains("mallory"));
    assert_eq!(rows[0]["user"], "root (uid 0)");
}

#[test]
fn a_database_still_in_use_after_the_stop_is_not_backed_up_under_it() {
    let demo = Demo::start();
    let site = demo.site();
    demo.edit_site(|s| s.replace("stop_wait_secs = 15", "stop_wait_secs = 2"));
    let db = demo.site_dir().join("node/app.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    let mut child = Command::new(bin("airlock-apply"))
        .args(["--json", "apply", &demo.bundle(), "--site", &site])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut holder = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if holder.is_none()
            && line.contains("\"step\":\"stop\"")
            && line.contains("\"status\":\"start\"")
        {
            // A process of the service that has not let go of its database.
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
            holder = Some(conn);
        }
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let code = child.wait().unwrap().code();
    drop(holder);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains("database `main`")
            && stderr.contains("is still in use 2s after the stop command"),
        "{stderr}"
    );
    assert!(!stderr.contains("ok backup database"), "{stderr}");
    assert_eq!(
        fs::read_to_string(demo.site_dir().join("node/RELEASE")).unwrap(),
        "1.0.0\n"
    );
    assert!(demo.healthy());
}
