//! Builds are reproducible and the builder refuses bad specs.

use crate::harness::*;

#[test]
fn two_builds_of_one_spec_are_byte_identical() {
    let keys = Keys::new(&["release"]);
    let work = tempfile::tempdir().unwrap();
    let spec = write_release(&work.path().join("release"), "1.1.0", "^1.0.0", false);
    let a = build_bundle(&spec, &keys.secret("release"), &work.path().join("a"));
    let b = build_bundle(&spec, &keys.secret("release"), &work.path().join("b"));
    assert_eq!(a.file_name(), b.file_name());
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(a == b, "builds differ");
}

#[test]
fn builder_refuses_bad_specs_with_the_reason() {
    let keys = Keys::new(&["release"]);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("release");
    let spec = write_release(&dir, "1.1.0", "^1.0.0", false);
    let original = std::fs::read_to_string(&spec).unwrap();
    let out = work.path().join("out");
    // (case, spec text, extra migration file, expected words in the error)
    let cases = [
        (
            "missing source",
            original.replace("source = \"etcd\"", "source = \"nope\""),
            false,
            "nope",
        ),
        (
            "version not SemVer",
            original.replace("version = \"1.1.0\"", "version = \"1.1\""),
            false,
            "not SemVer",
        ),
        (
            "relative install path",
            original.replace("/opt/etcd/bin/etcd", "opt/etcd"),
            false,
            "not absolute",
        ),
        (
            "duplicate migration number",
            original.clone(),
            true,
            "used twice",
        ),
    ];
    for (name, text, duplicate, want) in cases {
        std::fs::write(&spec, text).unwrap();
        if duplicate {
            std::fs::write(dir.join("migrations/1_again.sql"), "SELECT 1;").unwrap();
        }
        let run = airlock_build(&[
            "--no-progress",
            "build",
            "--spec",
            &spec.display().to_string(),
            "--key",
            &keys.secret("release"),
            "--out",
            &out.display().to_string(),
        ]);
        assert_eq!(run.code, 1, "{name}: {}", run.stderr);
        assert!(
            run.stderr.contains(want),
            "{name}: expected `{want}` in:\n{}",
            run.stderr
        );
        assert!(
            !out.join("etcd-node-1.1.0.airlock").exists(),
            "{name}: a bundle was written"
        );
    }
}

#[test]
fn encrypted_keys_need_their_passphrase() {
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("release");
    let keygen = |passphrase: Option<&str>| {
        let mut cmd = std::process::Command::new(bin("airlock-build"));
        cmd.args(["keygen", "--out", &key.display().to_string()])
            .stdin(std::process::Stdio::null())
            .env_remove("AIRLOCK_PASSPHRASE");
        if let Some(p) = passphrase {
            cmd.env("AIRLOCK_PASSPHRASE", p);
        }
        cmd.output().unwrap()
    };
    // Without a terminal and without AIRLOCK_PASSPHRASE there is no passphrase to use.
    let out = keygen(None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AIRLOCK_PASSPHRASE"));
    assert!(!work.path().join("release.key").exists());

    assert!(keygen(Some("correct horse")).status.success());
    let text = std::fs::read_to_string(work.path().join("release.key")).unwrap();
    assert!(airlock_formats::SecretKey::is_encrypted(&text).unwrap());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(work.path().join("release.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Refuses to overwrite an existing key.
    assert_eq!(keygen(Some("x")).status.code(), Some(1));

    let spec = write_release(&work.path().join("rel"), "1.1.0", "^1.0.0", false);
    let build = |passphrase: &str| {
        std::process::Command::new(bin("airlock-build"))
            .args([
                "--no-progress",
                "build",
                "--spec",
                &spec.display().to_string(),
                "--key",
            ])
            .arg(work.path().join("release.key"))
            .args(["--out", &work.path().join("out").display().to_string()])
            .env("AIRLOCK_PASSPHRASE", passphrase)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let wrong = build("wrong");
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("wrong passphrase for this key"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(build("correct horse").status.success());
}
