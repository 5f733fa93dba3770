//! `airlock-apply` on an operator's machine: where the site profile is
//! found, read-only commands with a broken trusted key, `inspect` and
//! `extract`, output sized for a person (`-v`, `--quiet`), times in RFC
//! 3339, completions and manual pages. Outputs are pinned in files under
//! `tests/e2e/cli/operator/` (rewritten with `SNAPSHOTS=overwrite`).

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::cli::{check, shapes};
use crate::demo::Demo;
use crate::harness::*;

/// `text` with sizes, which change with the build of the demo's binary
/// and the machine's free space, replaced by `[SIZE]`.
fn sizes_redacted(text: &str) -> String {
    let sizes = regex::Regex::new(r"\b\d+(\.\d)? (B|KiB|MiB|GiB)\b|\(\d+ bytes\)").unwrap();
    let ranges = regex::Regex::new(r"bytes \d+\.\.\d+").unwrap();
    ranges
        .replace_all(&sizes.replace_all(text, "[SIZE]"), "bytes [RANGE]")
        .into_owned()
}

/// Runs airlock-apply with `args`, `env` set and `AIRLOCK_SITE` unset.
fn apply_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(bin("airlock-apply"));
    cmd.args(args).env_remove("AIRLOCK_SITE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run::from(cmd.output().unwrap())
}

/// The `error:` line and what follows it.
fn error_tail(stderr: &str) -> String {
    stderr[stderr.find("error:").unwrap_or(0)..].to_owned()
}

#[test]
fn the_site_profile_comes_from_the_flag_then_airlock_site_then_etc() {
    let demo = Demo::start();
    assert!(
        !Path::new("/etc/airlock/site.toml").exists(),
        "this test needs a machine without /etc/airlock/site.toml"
    );
    // No flag, no variable: the default path, named in the error.
    let run = apply_env(&["status"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    check(
        "operator/no-site-profile.txt",
        &error_tail(&run.stderr),
        Some(&demo.root),
    );
    // AIRLOCK_SITE names it.
    let run = apply_env(&["status"], &[("AIRLOCK_SITE", &demo.site())]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("installed   1.0.0"), "{}", run.stdout);
    // A variable naming nothing says which variable.
    let missing = demo.root.join("missing.toml").display().to_string();
    let run = apply_env(&["--json", "status"], &[("AIRLOCK_SITE", &missing)]);
    assert_eq!(run.code, 1);
    let error: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["exit_code"], 1);
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .ends_with("(named by AIRLOCK_SITE)"),
        "{error}"
    );
    // --site wins over the variable.
    let run = apply_env(
        &["status", "--site", &demo.site()],
        &[("AIRLOCK_SITE", &missing)],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn a_node_profile_and_a_cluster_profile_are_told_apart() {
    let demo = Demo::start();
    let cluster = crate::cli::cluster_profile(&demo, None);
    let before = sha256_tree(&demo.site_dir());
    let run = airlock_apply(&["rollout", "status", "--site", &demo.site()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    check(
        "operator/node-profile-for-a-cluster.txt",
        &error_tail(&run.stderr),
        Some(&demo.root),
    );
    for args in [
        vec!["status", "--site", &cluster],
        vec!["history", "--site", &cluster],
        vec!["verify", &demo.bundle(), "--site", &cluster],
    ] {
        let run = airlock_apply(&args);
        assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
        check(
            "operator/cluster-profile-for-a-node.txt",
            &error_tail(&run.stderr),
            Some(&demo.root),
        );
    }
    assert_eq!(sha256_tree(&demo.site_dir()), before);
}

#[test]
fn read_only_commands_go_on_when_a_trusted_key_cannot_be_read() {
    let demo = Demo::start();
    airlock_apply(&["apply", &demo.bundle(), "--site", &demo.site()]).ok();
    // A typo in the key's path.
    demo.edit_site(|s| s.replace("keys/release.pub", "keys/relase.pub"));
    let before = sha256_tree(&demo.site_dir().join("state"));
    for args in [
        vec!["status", "--site", &demo.site()],
        vec!["history", "--site", &demo.site()],
        vec!["backups", "list", "--site", &demo.site()],
        vec!["backups", "verify", "--site", &demo.site()],
    ] {
        let run = airlock_apply(&args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.starts_with("warning: site profile")
                && run.stderr.contains("keys/relase.pub")
                && run.stderr.contains("verify and apply refuse every bundle"),
            "{args:?}: {}",
            run.stderr
        );
    }
    let status = airlock_apply(&["status", "--site", &demo.site()]).ok();
    assert!(
        status.stdout.contains("TRUST UNREADABLE") && status.stdout.contains("installed   1.1.0"),
        "{}",
        status.stdout
    );
    let json = airlock_apply(&["--json", "status", "--site", &demo.site()]).ok();
    let json: Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert!(json["trust_error"]
        .as_str()
        .unwrap()
        .contains("keys/relase.pub"));
    // What checks signatures refuses, naming the key file.
    let run = airlock_apply(&["verify", &demo.bundle(), "--site", &demo.site()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("keys/relase.pub"), "{}", run.stderr);
    // The read-only commands changed nothing but the audit of nothing.
    let after = sha256_tree(&demo.site_dir().join("state"));
    assert_eq!(before, after);
}

#[test]
fn inspect_shows_the_bundle_and_whether_this_site_trusts_it() {
    let demo = Demo::start();
    let run = airlock_apply(&[
        "--utc",
        "inspect",
        &demo.bundle(),
        "--files",
        "--site",
        &demo.site(),
    ])
    .ok();
    check(
        "operator/inspect-files.txt",
        &sizes_redacted(&run.stdout),
        Some(&demo.root),
    );
    // Without a site profile: shown, trust not checked.
    let run = apply_env(&["--utc", "inspect", &demo.bundle()], &[]).ok();
    assert!(
        run.stdout
            .contains("trust         not checked: no site profile found"),
        "{}",
        run.stdout
    );
    // A site that trusts another key: shown, trust not met.
    let other = Keys::new(&["other"]);
    fs::copy(
        other.public("other"),
        demo.site_dir().join("keys/release.pub"),
    )
    .unwrap();
    let run = airlock_apply(&["--json", "inspect", &demo.bundle(), "--site", &demo.site()]).ok();
    let shown: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(shown["type"], "inspection");
    assert_eq!(shown["trust"]["met"], false, "{shown}");
    assert_eq!(shown["version"], "1.1.0");
    assert_eq!(shown["sha256"], sha256_file(Path::new(&demo.bundle())));
    check(
        "json/inspect-apply.jsonl",
        &shapes(&run.stdout),
        Some(&demo.root),
    );
}

#[test]
fn extract_writes_a_file_only_once_the_bundle_is_trusted_and_whole() {
    let demo = Demo::start();
    let out = demo.root.join("RELEASE.txt");
    let site = demo.site();
    let extract = |json: bool, bundle: &str, path: &str| {
        let out = out.display().to_string();
        let mut args = vec!["extract", bundle, path, "--out", &out, "--site", &site];
        if json {
            args.insert(0, "--json");
        }
        airlock_apply(&args)
    };
    let run = extract(false, &demo.bundle(), "files/RELEASE").ok();
    assert_eq!(fs::read_to_string(&out).unwrap(), "1.1.0\n");
    assert!(
        run.stderr.contains("ok extract: `files/RELEASE`"),
        "{}",
        run.stderr
    );
    let json = extract(true, &demo.bundle(), "files/RELEASE").ok();
    check(
        "json/extract.jsonl",
        &shapes(&json.stdout),
        Some(&demo.root),
    );

    // What is at --out before a failed extract stays as it was, and no
    // temporary file is left beside it.
    fs::write(&out, "kept\n").unwrap();
    let unchanged = |run: &Run, code: i32, name: &str| {
        assert_eq!(run.code, code, "{}", run.stderr);
        check(
            name,
            &sizes_redacted(&error_tail(&run.stderr)),
            Some(&demo.root),
        );
        assert_eq!(fs::read_to_string(&out).unwrap(), "kept\n");
        let left: Vec<_> = fs::read_dir(&demo.root)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains("airlock-tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    };
    // A path the bundle does not hold.
    let run = extract(false, &demo.bundle(), "files/NOPE");
    unchanged(&run, 1, "operator/extract-no-such-file.txt");
    // A damaged payload: the file's own bytes are fine, a later chunk is not.
    let damaged = demo.root.join("damaged.airlock");
    let mut bytes = fs::read(demo.bundle()).unwrap();
    let at = bytes.len() - 20_000;
    bytes[at..at + 64].fill(b'X');
    fs::write(&damaged, bytes).unwrap();
    let run = extract(false, &damaged.display().to_string(), "files/RELEASE");
    unchanged(&run, 3, "operator/extract-damaged.txt");
    // A site that does not trust the signer.
    let other = Keys::new(&["other"]);
    fs::copy(
        other.public("other"),
        demo.site_dir().join("keys/release.pub"),
    )
    .unwrap();
    let run = extract(false, &demo.bundle(), "files/RELEASE");
    unchanged(&run, 3, "operator/extract-untrusted.txt");
}

/// The stderr of an apply without what changes from run to run.
fn without_elapsed(stderr: &str) -> String {
    stderr
        .lines()
        .map(|l| match l.find(']') {
            Some(i) if l.starts_with('[') => format!("[ELAPSED]{}", &l[i + 1..]),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn an_apply_shows_a_person_one_line_per_step() {
    let demo = Demo::start();
    let run = airlock_apply(&["apply", &demo.bundle(), "--site", &demo.site()]).ok();
    let lines = run.stderr.lines().count();
    assert!(lines <= 25, "{lines} lines:\n{}", run.stderr);
    check(
        "operator/apply-default.txt",
        &sizes_redacted(&without_elapsed(&run.stderr)),
        Some(&demo.root),
    );
    // -v: every event, start lines and each file.
    airlock_apply(&["rollback", "--site", &demo.site(), "--yes", "--quiet"]).ok();
    let verbose = airlock_apply(&["-v", "apply", &demo.bundle(), "--site", &demo.site()]).ok();
    assert!(
        verbose.stderr.lines().count() > lines + 15,
        "{}",
        verbose.stderr
    );
    assert!(
        verbose.stderr.contains(".. install: "),
        "{}",
        verbose.stderr
    );
    assert!(!verbose.stderr.contains("(-v shows each)"));
    // The log file always has every event.
    let log = fs::read_to_string(demo.site_dir().join("state/logs/apply-3.log")).unwrap();
    assert!(
        log.contains(".. install: ") && log.contains("ok done: "),
        "{log}"
    );
    // --quiet: nothing on success, the exit code says it.
    let quiet = airlock_apply(&["--quiet", "rollback", "--site", &demo.site(), "--yes"]).ok();
    assert_eq!(quiet.stderr, "");
    assert_eq!(quiet.stdout, "");
    // --quiet still shows the error.
    let refused = airlock_apply(&[
        "-q",
        "apply",
        "/nonexistent.airlock",
        "--site",
        &demo.site(),
    ]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.starts_with("error: "), "{}", refused.stderr);
    // --json is every event, whatever the verbosity.
    let json = airlock_apply(&[
        "--json",
        "-q",
        "apply",
        &demo.bundle(),
        "--site",
        &demo.site(),
    ])
    .ok();
    let events = crate::demo::messages(&json.stdout).len();
    assert!(events > lines + 15, "{events} messages");
    assert_eq!(json.stderr, "");
}

#[test]
fn times_are_rfc3339_in_the_local_zone_or_utc_and_status_agrees_with_history() {
    let demo = Demo::start();
    airlock_apply(&["apply", &demo.bundle(), "--site", &demo.site()]).ok();
    let at = |args: &[&str], tz: &str, marker: &str| -> String {
        let run = apply_env(args, &[("TZ", tz)]).ok();
        let line = run
            .stdout
            .lines()
            .find(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("no `{marker}` in {}", run.stdout))
            .to_owned();
        let re = regex::Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)").unwrap();
        re.find(&line)
            .unwrap_or_else(|| panic!("no RFC 3339 time in `{line}`"))
            .as_str()
            .to_owned()
    };
    let site = demo.site();
    // POSIX TZ: `<+0530>-5:30` is 5 h 30 east of UTC.
    let local = at(&["status", "--site", &site], "<+0530>-5:30", "#1 ");
    assert!(local.ends_with("+05:30"), "{local}");
    let history = at(&["history", "--site", &site], "<+0530>-5:30", "#1 ");
    assert_eq!(local, history, "status and history show one time");
    let utc = at(&["--utc", "status", "--site", &site], "<+0530>-5:30", "#1 ");
    assert!(utc.ends_with('Z'), "{utc}");
    // The same instant.
    let parse = |t: &str| t.parse::<jiff::Timestamp>().unwrap();
    assert_eq!(parse(&local), parse(&utc));
    // JSON: Unix seconds and the RFC 3339 twin.
    let json = apply_env(&["--json", "--utc", "history", "--site", &site], &[]).ok();
    let history: Value = serde_json::from_str(json.stdout.trim()).unwrap();
    let entry = &history["entries"][0];
    assert_eq!(
        parse(entry["at_rfc3339"].as_str().unwrap()).as_second(),
        entry["at"].as_i64().unwrap()
    );
}

#[test]
fn completions_and_manual_pages_come_from_the_binaries() {
    for program in ["airlock-apply", "airlock-build"] {
        for shell in ["bash", "zsh", "fish"] {
            let out = Command::new(bin(program))
                .args(["completions", shell])
                .output()
                .unwrap();
            assert!(out.status.success(), "{program} {shell}");
            let script = String::from_utf8(out.stdout).unwrap();
            assert!(script.contains(program), "{program} {shell}");
            assert!(
                script.contains("verify"),
                "{program} {shell}: no subcommand"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(bin(program))
            .args(["manpages", "--out"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{program}");
        let page = fs::read_to_string(dir.path().join(format!("{program}.1"))).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
        assert!(dir.path().join(format!("{program}-verify.1")).exists());
    }
    // The bash script really completes: a bash that sources it offers
    // `inspect` after `airlock-apply ins` (bash calls the function with the
    // command, the word and the word before).
    let out = Command::new(bin("airlock-apply"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("airlock-apply.bash");
    fs::write(&script, out.stdout).unwrap();
    let run = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(airlock-apply ins); COMP_CWORD=1; _airlock__apply airlock-apply ins airlock-apply; echo \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "inspect",
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
