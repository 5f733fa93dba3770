//! `airlock-build`'s command-line contract, pinned in files under
//! `tests/e2e/cli/` as `cli.rs` pins `airlock-apply`'s: the `--json` line
//! of every command and of a failure (`json/build-*.jsonl`,
//! `json/inspect.jsonl`), and the text people read (`build/`): build,
//! inspect and verify, an unsigned build signed into a new file from
//! read-only media, a bad spec refused before any passphrase is asked for,
//! and an empty passphrase warned about. Failures leave the disk as it was.
//!
//! After an intended change, `SNAPSHOTS=overwrite cargo test -p
//! airlock-tests --test e2e cli_build` rewrites the files; review their diff.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::cli::{check, shapes};
use crate::demo::Demo;
use crate::harness::*;

/// Runs `airlock-build ARGS` as [`airlock_build`] does (`SOURCE_DATE_EPOCH`
/// fixed, stdin not a terminal), with `AIRLOCK_PASSPHRASE` set when given.
fn airlock_build_with(passphrase: Option<&str>, args: &[&str]) -> Run {
    let mut command = Command::new(bin("airlock-build"));
    command
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1767225600")
        .env_remove("AIRLOCK_PASSPHRASE");
    if let Some(p) = passphrase {
        command.env("AIRLOCK_PASSPHRASE", p);
    }
    let out = command.output().expect("run airlock-build");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The `error:` line and what follows it.
fn error_tail(stderr: &str) -> &str {
    stderr.find("error:").map_or(stderr, |at| &stderr[at..])
}

/// `text` with what changes from run to run and is not in `cli.rs`'s
/// redactions made steady: the random part of a temporary file's name.
fn steady(text: &str) -> String {
    regex::Regex::new(r"\.[A-Za-z0-9]{6}\.airlock-tmp")
        .unwrap()
        .replace_all(text, ".XXXXXX.airlock-tmp")
        .into_owned()
}

/// Every file under `dir` with its SHA-256 and permission bits, sorted:
/// what a failed command must leave as it was.
fn listing(dir: &Path) -> Vec<(PathBuf, String, u32)> {
    let mut files: Vec<_> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(Result::unwrap)
        .map(|e| {
            let mode = e.metadata().unwrap().permissions().mode();
            let sha = if e.file_type().is_file() {
                sha256_file(e.path())
            } else {
                String::new()
            };
            (e.path().to_owned(), sha, mode)
        })
        .collect();
    files.sort();
    files
}

/// A small release whose every byte is fixed (unlike the demo's, whose
/// binary is this build's airlock-demo-service), so its text is pinned
/// whole: a binary, a file and two sqlx migrations. Returns the spec.
fn small_release(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("app"), "#!/bin/sh\necho app 1.1.0\n").unwrap();
    fs::write(dir.join("app.conf"), "port = 8080\n").unwrap();
    write_migrations(&dir.join("migrations"));
    let spec = dir.join("bundle.toml");
    fs::write(
        &spec,
        r#"name = "app"
version = "1.1.0"
upgrades_from = ">=1.0.0, <1.1.0"
platform = "linux-x86_64"
min_applier_version = "0.2.0"
expires_after_days = 30

[[binary]]
name = "app"
source = "app"
install_path = "/opt/app/bin/app"

[[file]]
source = "app.conf"
install_path = "/opt/app/app.conf"

[[migrations]]
database = "main"
dir = "migrations"
"#,
    )
    .unwrap();
    spec
}

/// Each line of a `--json` run's stdout is a JSON object with a `type`.
#[track_caller]
fn assert_json_lines(stdout: &str) -> Vec<Value> {
    assert!(!stdout.trim().is_empty(), "no JSON on stdout");
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(v["type"].is_string(), "no type: {l}");
            v
        })
        .collect()
}

#[test]
fn every_airlock_build_command_keeps_its_json_shape() {
    let demo = Demo::start();
    let root = demo.root.clone();
    let at = |name: &str| root.join(name).display().to_string();
    let spec = at("release/bundle.toml");
    let key = demo.keys.secret("release");
    let public = demo.keys.public("release").display().to_string();
    let json = |name: &str, args: &[&str]| {
        let mut all = vec!["--json", "--no-progress"];
        all.extend(args);
        let run = airlock_build(&all).ok();
        assert_json_lines(&run.stdout);
        check(
            &format!("json/{name}.jsonl"),
            &shapes(&run.stdout),
            Some(&root),
        );
        run
    };
    json(
        "build-keygen",
        &["keygen", "--out", &at("keys/k"), "--unencrypted"],
    );
    // `--json` after the command, as `build --json` always took it.
    let built = airlock_build(&[
        "--no-progress",
        "build",
        "--spec",
        &spec,
        "--key",
        &key,
        "--out",
        &at("out-json"),
        "--json",
    ])
    .ok();
    check("json/build.jsonl", &shapes(&built.stdout), Some(&root));
    let bundle = assert_json_lines(&built.stdout)[0]["bundle"]
        .as_str()
        .unwrap()
        .to_owned();
    let inspected = airlock_build(&["inspect", &bundle, "--json"]).ok();
    check(
        "json/inspect.jsonl",
        &shapes(&inspected.stdout),
        Some(&root),
    );
    json("build-verify", &["verify", &bundle, "--trust", &public]);
    json(
        "build-unsigned-volumes",
        &[
            "build",
            "--spec",
            &spec,
            "--unsigned",
            "--out",
            &at("out-unsigned"),
            "--volume-size",
            "8M",
            "--parity",
            "10",
        ],
    );
    json(
        "build-split",
        &[
            "split",
            &bundle,
            "--volume-size",
            "8M",
            "--out",
            &at("volumes"),
        ],
    );
    json(
        "build-join",
        &["join", &at("volumes"), "--out", &at("joined.airlock")],
    );
    json(
        "build-sign",
        &[
            "sign",
            &bundle,
            "--key",
            &at("keys/k.key"),
            "--out",
            &at("signed.airlock"),
        ],
    );
    let update = at("trust-2.json");
    json(
        "build-trust-new",
        &[
            "trust",
            "new",
            "--key",
            &public,
            "--trust-version",
            "2",
            "--expires-after-days",
            "90",
            "--out",
            &update,
        ],
    );
    json(
        "build-trust-sign",
        &["trust", "sign", &update, "--key", &key],
    );
    // A failure: stdout still carries JSON only, the error line last, and
    // stderr the same error for a person.
    let refused = airlock_build(&["--json", "verify", &at("out-unsigned"), "--trust", &public]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    let lines = assert_json_lines(&refused.stdout);
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "error");
    assert_eq!(last["exit_code"], 3);
    assert!(
        refused
            .stderr
            .contains(&format!("error: {}", last["error"].as_str().unwrap())),
        "{}",
        refused.stderr
    );
    assert!(refused
        .stderr
        .contains(&format!("help: {}", last["help"].as_str().unwrap())));
    check(
        "json/build-error.jsonl",
        &shapes(&refused.stdout),
        Some(&root),
    );
    // A failure with no help: the field is left out.
    let missing = airlock_build(&["--json", "join", &at("nothing"), "--out", &at("x")]);
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    let last = assert_json_lines(&missing.stdout).pop().unwrap();
    assert_eq!(last["type"], "error");
    assert!(last.get("help").is_none(), "{last}");
    assert!(!root.join("x").exists());
    // `completions` prints its script whatever --json says.
    let completions = airlock_build(&["--json", "completions", "bash"]).ok();
    assert!(
        completions.stdout.contains("COMPREPLY"),
        "{}",
        completions.stdout
    );
}

#[test]
fn the_text_of_build_inspect_and_verify_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let at = |name: &str| root.join(name).display().to_string();
    let spec = small_release(&root.join("release")).display().to_string();
    airlock_build(&["keygen", "--out", &at("keys/release"), "--unencrypted"]).ok();
    let built = airlock_build_with(
        None,
        &[
            "--no-progress",
            "build",
            "--spec",
            &spec,
            "--key",
            &at("keys/release.key"),
            "--out",
            &at("out"),
        ],
    )
    .ok();
    assert_eq!(built.stdout, format!("{}\n", at("out/app-1.1.0.airlock")));
    check("build/build.txt", &built.stderr, Some(root));
    let bundle = at("out/app-1.1.0.airlock");
    let inspected = airlock_build(&["--utc", "inspect", &bundle]).ok();
    check("build/inspect.txt", &inspected.stdout, Some(root));
    let verified = airlock_build(&["verify", &bundle, "--trust", &at("keys/release.pub")]).ok();
    check("build/verify.txt", &verified.stdout, Some(root));
    // `--utc` names the zone; the JSON carries both forms of each time.
    let json = airlock_build(&[
        "--json",
        "--utc",
        "verify",
        &bundle,
        "--trust",
        &at("keys/release.pub"),
    ])
    .ok();
    let facts = &assert_json_lines(&json.stdout)[0];
    assert_eq!(facts["created_at"], 1_767_225_600);
    assert_eq!(facts["created_at_rfc3339"], "2026-01-01T00:00:00Z");
    assert_eq!(facts["expires_at_rfc3339"], "2026-01-31T00:00:00Z");
    assert_eq!(facts["threshold"], 1);
    assert_eq!(facts["signers"], facts["signatures"]);
    assert_eq!(
        facts["sha256"].as_str().unwrap(),
        sha256_file(Path::new(&bundle))
    );
    assert_eq!(facts["size"], fs::metadata(&bundle).unwrap().len());
    // A trust update's expiry, as a person reads it.
    let trust_new = airlock_build(&[
        "--utc",
        "trust",
        "new",
        "--key",
        &at("keys/release.pub"),
        "--trust-version",
        "2",
        "--expires-after-days",
        "90",
        "--out",
        &at("trust-2.json"),
    ])
    .ok();
    check("build/trust-new.txt", &trust_new.stderr, Some(root));
}

#[test]
fn an_unsigned_bundle_is_refused_until_signed_into_a_new_file_from_read_only_media() {
    let demo = Demo::start();
    let root = demo.root.clone();
    let at = |name: &str| root.join(name).display().to_string();
    let spec = at("release/bundle.toml");
    let key = demo.keys.secret("release");
    let public = demo.keys.public("release").display().to_string();
    // --key or --unsigned, not both and not neither.
    let both = airlock_build(&[
        "build",
        "--spec",
        &spec,
        "--key",
        &key,
        "--unsigned",
        "--out",
        &at("x"),
    ]);
    assert_eq!(both.code, 2, "{}", both.stderr);
    let neither = airlock_build(&["build", "--spec", &spec, "--out", &at("x")]);
    assert_eq!(neither.code, 2, "{}", neither.stderr);
    assert!(neither.stderr.contains("--key <KEY>"), "{}", neither.stderr);
    assert!(!root.join("x").exists());

    let built = airlock_build(&[
        "--no-progress",
        "build",
        "--spec",
        &spec,
        "--unsigned",
        "--out",
        &at("unsigned"),
    ])
    .ok();
    let unsigned = built.stdout.trim().to_owned();
    assert!(
        built
            .stderr
            .contains("unsigned: sign it with `airlock-build sign` before use"),
        "{}",
        built.stderr
    );
    // Readers read it (docs/FORMAT.md: zero or more signatures)...
    let inspected = airlock_build(&["inspect", &unsigned]).ok();
    assert!(
        inspected.stdout.contains("\nsignatures:   none (unsigned"),
        "{}",
        inspected.stdout
    );
    // ...and nobody accepts it.
    let refused = airlock_build(&["verify", &unsigned, "--trust", &public]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    check(
        "build/verify-unsigned.txt",
        error_tail(&refused.stderr),
        Some(&root),
    );
    let applied = airlock_apply(&["verify", &unsigned, "--site", &demo.site()]);
    assert_eq!(applied.code, 3, "{}", applied.stderr);
    assert!(
        applied.stderr.contains("signed by 0 trusted key(s)"),
        "{}",
        applied.stderr
    );
    check(
        "build/apply-verify-unsigned.txt",
        error_tail(&applied.stderr),
        Some(&root),
    );

    // The unsigned bundle on read-only media: a tmpfs remounted read-only,
    // the file 0444 in a 0555 folder.
    let media = root.join("media");
    let _tmpfs = Tmpfs::mount(&media, 64);
    let on_media = media.join("demo-1.1.0.airlock");
    fs::copy(&unsigned, &on_media).unwrap();
    fs::set_permissions(&on_media, fs::Permissions::from_mode(0o444)).unwrap();
    fs::set_permissions(&media, fs::Permissions::from_mode(0o555)).unwrap();
    let status = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&media)
        .status()
        .unwrap();
    assert!(status.success());
    let before = listing(&media);
    let on_media = on_media.display().to_string();
    // Signing in place cannot write there, says so, and changes nothing.
    let in_place = airlock_build(&["sign", &on_media, "--key", &key]);
    assert_eq!(in_place.code, 1, "{}", in_place.stderr);
    check(
        "build/sign-read-only.txt",
        &steady(error_tail(&in_place.stderr)),
        Some(&root),
    );
    assert_eq!(listing(&media), before);
    // --out writes a new signed bundle beside nothing on the media.
    fs::create_dir_all(root.join("signed")).unwrap();
    let signed = at("signed/demo-1.1.0.airlock");
    let run = airlock_build(&["sign", &on_media, "--key", &key, "--out", &signed]).ok();
    assert_eq!(run.stdout, format!("{signed}\n"));
    check("build/sign-out.txt", &run.stderr, Some(&root));
    assert_eq!(listing(&media), before);
    // The same manifest and payload, now with one signature.
    let entries = |path: &str| {
        let text = airlock_build(&["inspect", path]).ok().stdout;
        text.lines()
            .filter(|l| {
                !l.starts_with("  key ") && !l.starts_with("signatures") && !l.starts_with("sha256")
            })
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(entries(&on_media), entries(&signed));
    airlock_build(&["verify", &signed, "--trust", &public]).ok();
    let accepted = airlock_apply(&["verify", &signed, "--site", &demo.site()]);
    assert_eq!(accepted.code, 0, "{}", accepted.stderr);
    // Signing it again by the same key is refused, and changes nothing.
    let signed_listing = listing(&root.join("signed"));
    let again = airlock_build(&["sign", &signed, "--key", &key]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(
        again.stderr.contains("already signed by key"),
        "{}",
        again.stderr
    );
    let again = airlock_build(&[
        "sign",
        &signed,
        "--key",
        &key,
        "--out",
        &at("signed/again.airlock"),
    ]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert_eq!(listing(&root.join("signed")), signed_listing);
}

#[test]
fn a_bad_spec_fails_with_its_own_error_before_any_passphrase_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let at = |name: &str| root.join(name).display().to_string();
    let spec = small_release(&root.join("release"));
    // An encrypted key; these runs have no AIRLOCK_PASSPHRASE and no terminal.
    airlock_build_with(
        Some("correct horse"),
        &["keygen", "--out", &at("keys/release")],
    )
    .ok();
    let key = at("keys/release.key");
    let good = fs::read_to_string(&spec).unwrap();
    let build = |passphrase: Option<&str>| {
        airlock_build_with(
            passphrase,
            &[
                "--no-progress",
                "build",
                "--spec",
                &spec.display().to_string(),
                "--key",
                &key,
                "--out",
                &at("out"),
            ],
        )
    };
    for name in ["typo", "missing-source", "migrations"] {
        match name {
            "typo" => fs::write(&spec, good.replace("upgrades_from", "upgrade_from")).unwrap(),
            "missing-source" => {
                fs::write(&spec, &good).unwrap();
                fs::remove_file(root.join("release/app.conf")).unwrap();
            }
            _ => {
                fs::write(root.join("release/app.conf"), "port = 8080\n").unwrap();
                fs::write(
                    root.join("release/migrations/0002_again.sql"),
                    "SELECT 1;\n",
                )
                .unwrap();
            }
        }
        let before = listing(root);
        let run = build(None);
        assert_eq!(run.code, 1, "{name}: {}", run.stderr);
        assert!(!run.stderr.contains("passphrase"), "{name}: {}", run.stderr);
        check(
            &format!("build/bad-spec-{name}.txt"),
            &steady(error_tail(&run.stderr)),
            Some(root),
        );
        assert_eq!(listing(root), before, "{name}");
        // --json: the same error as the last line.
        let json = airlock_build(&[
            "--json",
            "build",
            "--spec",
            &spec.display().to_string(),
            "--key",
            &key,
            "--out",
            &at("out"),
        ]);
        let last = assert_json_lines(&json.stdout).pop().unwrap();
        assert_eq!(last["type"], "error");
        assert_eq!(last["exit_code"], 1);
        assert!(
            !last["error"].as_str().unwrap().contains("passphrase"),
            "{last}"
        );
        assert_eq!(listing(root), before, "{name}");
    }
    // The spec fixed, the same run stops only at the key: it was asked for last.
    fs::remove_file(root.join("release/migrations/0002_again.sql")).unwrap();
    let run = build(None);
    assert_eq!(run.code, 1, "{}", run.stderr);
    check(
        "build/needs-passphrase.txt",
        error_tail(&run.stderr),
        Some(root),
    );
    assert!(!root.join("out").exists());
    let run = build(Some("correct horse")).ok();
    assert_eq!(run.stdout, format!("{}\n", at("out/app-1.1.0.airlock")));
}

#[test]
fn an_empty_keygen_passphrase_is_taken_with_a_warning_as_minisign_does() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let at = |name: &str| root.join(name).display().to_string();
    let run = airlock_build_with(Some(""), &["keygen", "--out", &at("empty")]).ok();
    check("build/keygen-empty-passphrase.txt", &run.stderr, Some(root));
    // The key is encrypted with the empty passphrase: it opens with it...
    let text = fs::read_to_string(root.join("empty.key")).unwrap();
    assert!(!text.is_empty());
    let spec = small_release(&root.join("release")).display().to_string();
    let build = |passphrase| {
        airlock_build_with(
            passphrase,
            &[
                "--no-progress",
                "build",
                "--spec",
                &spec,
                "--key",
                &at("empty.key"),
                "--out",
                &at("out"),
            ],
        )
    };
    build(Some("")).ok();
    // ...and, being encrypted, asks for it.
    let run = build(None);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("needs a passphrase"), "{}", run.stderr);
    // --unencrypted says it on purpose: no warning.
    let run = airlock_build_with(
        Some(""),
        &["keygen", "--out", &at("plain"), "--unencrypted"],
    )
    .ok();
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    // A real passphrase: no warning either.
    let run = airlock_build_with(Some("correct horse"), &["keygen", "--out", &at("good")]).ok();
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
}
