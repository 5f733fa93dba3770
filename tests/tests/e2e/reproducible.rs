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
    let cases: Vec<(&str, String, Box<dyn Fn()>)> = vec![
        ("missing source", original.replace("source = \"etcd\"", "source = \"nope\""), Box::new(|| {})),
        ("version not SemVer", original.replace("version = \"1.1.0\"", "version = \"1.1\""), Box::new(|| {})),
        ("relative install path", original.replace("/opt/etcd/bin/etcd", "opt/etcd"), Box::new(|| {})),
        ("duplicate migration number", original.clone(), {
            let d = dir.clone();
            Box::new(move || std::fs::write(d.join("migrations/1_again.sql"), "SELECT 1;").unwrap())
        }),
    ];
    let expected = ["nope", "not SemVer", "not absolute", "used twice"];
    for ((name, text, prepare), want) in cases.into_iter().zip(expected) {
        std::fs::write(&spec, text).unwrap();
        prepare();
        let run = airlock_build(&["--no-progress", "build", "--spec", &spec.display().to_string(), "--key", &keys.secret("release"), "--out", &out.display().to_string()]);
        assert_eq!(run.code, 1, "{name}: {}", run.stderr);
        assert!(run.stderr.contains(want), "{name}: expected `{want}` in:\n{}", run.stderr);
        assert!(!out.join("etcd-node-1.1.0.airlock").exists(), "{name}: a bundle was written");
    }
}
