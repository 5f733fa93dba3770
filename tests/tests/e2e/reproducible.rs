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
