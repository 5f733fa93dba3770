//! Across the air gap on removable media: volume sets read in place from a
//! read-only folder, damaged volumes named and repaired with parity,
//! volumes of another build caught, short copies refused.

use std::fs;
use std::path::{Path, PathBuf};

use crate::demo::Demo;
use crate::harness::*;

/// Writes `mib` MiB that no compressor shrinks into `dir/blob-N.bin` files
/// of 1 MiB.
fn noise(dir: &Path, mib: usize, seed: u64) {
    fs::create_dir_all(dir).unwrap();
    let mut state = seed | 1;
    for i in 0..mib {
        let mut bytes = Vec::with_capacity(1 << 20);
        while bytes.len() < 1 << 20 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.extend_from_slice(&state.to_le_bytes());
        }
        fs::write(dir.join(format!("blob-{i:03}.bin")), bytes).unwrap();
    }
}

/// A release of the demo whose `static` tree also holds `mib` MiB of noise.
fn big_release(demo: &Demo, version: &str, mib: usize, seed: u64) -> String {
    demo.release(version, |release| {
        noise(&release.join("static/data"), mib, seed)
    })
}

/// `airlock-build split BUNDLE --volume-size SIZE [--parity P] --out OUT`;
/// returns the index.
fn split(bundle: &str, size: &str, parity: Option<&str>, out: &Path) -> PathBuf {
    let out_text = out.display().to_string();
    let mut args = vec!["split", bundle, "--volume-size", size, "--out", &out_text];
    if let Some(p) = parity {
        args.extend(["--parity", p]);
    }
    PathBuf::from(airlock_build(&args).ok().stdout.trim())
}

/// What an apply would change on the demo node: its binary, release file,
/// static tree and database, and the installed version.
fn node_state(demo: &Demo) -> Vec<String> {
    let node = demo.site_dir().join("node");
    let mut state = vec![
        sha256_file(&node.join("bin/demo-service")),
        fs::read_to_string(node.join("RELEASE")).unwrap(),
        node.join("static").exists().to_string(),
        node.join("app.db").exists().to_string(),
    ];
    if node.join("static").exists() {
        state.push(sha256_tree(&node.join("static")));
    }
    let status = airlock_apply(&["--json", "status", "--site", &demo.site()]).ok();
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    state.push(status["installed"].to_string());
    state
}

/// Runs each of `commands` on `bundle`: each exits 3 with every one of
/// `reasons` in its error, and the node is as it was.
fn assert_refused(demo: &Demo, bundle: &str, commands: &[&str], reasons: &[&str]) {
    let before = node_state(demo);
    for command in commands {
        let run = airlock_apply(&[command, bundle, "--site", &demo.site()]);
        assert_eq!(run.code, 3, "{command}: {}", run.stderr);
        for reason in reasons {
            assert!(
                run.stderr.contains(reason),
                "{command}: no `{reason}` in {}",
                run.stderr
            );
        }
    }
    assert_eq!(
        node_state(demo),
        before,
        "a refused bundle changed the node"
    );
}

fn volumes(index: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(index.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.rsplit('.')
                .next()
                .is_some_and(|ext| ext.chars().all(|c| c.is_ascii_digit()))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_bundle_in_volumes_applies_in_place_from_a_read_only_folder() {
    let demo = Demo::start();
    let bundle = big_release(&demo, "1.1.0", 200, 7);
    let work = tempfile::tempdir().unwrap();
    // build --volume-size writes the volumes and the index instead of the file.
    let built = airlock_build(&[
        "--no-progress",
        "build",
        "--spec",
        &demo
            .root
            .join("release-1.1.0/bundle.toml")
            .display()
            .to_string(),
        "--key",
        &demo.keys.secret("release"),
        "--out",
        &work.path().join("built").display().to_string(),
        "--volume-size",
        "32M",
        "--parity",
        "25%",
    ])
    .ok();
    let index = PathBuf::from(built.stdout.trim());
    assert!(
        index.ends_with("demo-1.1.0.airlock.index"),
        "{}",
        built.stdout
    );
    assert!(!work.path().join("built/demo-1.1.0.airlock").exists());
    let data = volumes(&index);
    assert!(data.len() >= 7, "{} volumes", data.len());
    for v in &data {
        assert!(
            fs::metadata(v).unwrap().len() <= 32 << 20,
            "{}",
            v.display()
        );
    }
    // The same bundle as the single file: the SHA-256 the build printed.
    let single = sha256_file(Path::new(&bundle));
    assert!(
        built.stderr.contains(&format!("sha256 {single}")),
        "{}",
        built.stderr
    );

    // The stick: a tmpfs holding the set, mounted read-only.
    let stick = work.path().join("stick");
    let _mount = Tmpfs::mount(&stick, 400);
    for f in fs::read_dir(index.parent().unwrap()).unwrap() {
        let f = f.unwrap().path();
        fs::copy(&f, stick.join(f.file_name().unwrap())).unwrap();
    }
    let remount = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&stick)
        .status()
        .unwrap();
    assert!(remount.success());
    assert!(
        fs::write(stick.join("probe"), "x").is_err(),
        "the stick is writable"
    );

    let check = airlock_apply(&["check-media", &stick.display().to_string()]).ok();
    assert!(
        check.stderr.contains("the set is usable"),
        "{}",
        check.stderr
    );
    assert!(check.stderr.contains(&single), "{}", check.stderr);
    let inspect = airlock_build(&["inspect", &stick.display().to_string()]).ok();
    assert!(
        inspect.stdout.contains(&format!("sha256        {single}")),
        "{}",
        inspect.stdout
    );
    let stick_index = stick.join("demo-1.1.0.airlock.index").display().to_string();
    airlock_apply(&["verify", &stick_index, "--site", &demo.site()]).ok();
    let plan = airlock_apply(&["plan", &stick.display().to_string(), "--site", &demo.site()]).ok();
    assert!(
        plan.stdout.contains("demo 1.0.0 -> 1.1.0"),
        "{}",
        plan.stdout
    );
    let apply = airlock_apply(&[
        "apply",
        &stick.display().to_string(),
        "--site",
        &demo.site(),
    ])
    .ok();
    assert!(
        apply.stderr.contains("ok done: 1.0.0 -> 1.1.0"),
        "{}",
        apply.stderr
    );
    assert_eq!(
        sha256_tree(&demo.site_dir().join("node/static/data")),
        sha256_tree(&demo.root.join("release-1.1.0/static/data"))
    );
    assert!(demo.healthy());
}

#[test]
fn a_flipped_byte_is_named_then_repaired_with_parity_and_applied() {
    let demo = Demo::start();
    let bundle = big_release(&demo, "1.1.0", 24, 11);
    let work = tempfile::tempdir().unwrap();
    let index = split(&bundle, "4M", Some("30"), &work.path().join("set"));
    let data = volumes(&index);
    let third = &data[2];
    let mut bytes = fs::read(third).unwrap();
    bytes[12_345] ^= 0x20;
    fs::write(third, &bytes).unwrap();
    let damaged = sha256_file(third);
    let name = third.file_name().unwrap().to_string_lossy().into_owned();
    let set = index.parent().unwrap().display().to_string();

    // `plan` reads the header only; `verify` and `apply` read every byte
    // (apply before it stops anything).
    let damaged_reason = format!("`{name}` does not match its SHA-256 in the index");
    assert_refused(
        &demo,
        &set,
        &["verify", "apply"],
        &[
            &damaged_reason,
            "parity can rebuild",
            "airlock-apply repair",
        ],
    );
    let check = airlock_apply(&["check-media", &set]);
    assert_eq!(check.code, 3, "{}", check.stderr);
    assert!(
        check.stderr.contains(&format!("{name}: BAD")),
        "{}",
        check.stderr
    );

    let fixed = work.path().join("fixed");
    let repair = airlock_apply(&["repair", &set, "--out", &fixed.display().to_string()]).ok();
    assert!(
        repair
            .stderr
            .contains(&format!("rebuilt {name} from parity")),
        "{}",
        repair.stderr
    );
    assert_eq!(sha256_file(third), damaged, "repair touched the original");
    airlock_apply(&["check-media", &fixed.display().to_string()]).ok();
    airlock_apply(&[
        "apply",
        &fixed.display().to_string(),
        "--site",
        &demo.site(),
    ])
    .ok();
    assert_eq!(
        fs::read_to_string(demo.site_dir().join("node/RELEASE")).unwrap(),
        "1.1.0\n"
    );
}

#[test]
fn missing_volumes_beyond_parity_are_refused_and_nothing_changes() {
    let demo = Demo::start();
    let bundle = big_release(&demo, "1.1.0", 24, 13);
    let work = tempfile::tempdir().unwrap();
    let index = split(&bundle, "4M", Some("10"), &work.path().join("set"));
    let data = volumes(&index);
    // One parity volume; two volumes lost.
    fs::remove_file(&data[1]).unwrap();
    fs::remove_file(&data[4]).unwrap();
    let set = index.display().to_string();
    assert_refused(
        &demo,
        &set,
        &["verify", "plan", "apply"],
        &["is missing", "parity cannot rebuild them"],
    );
    let fixed = work.path().join("fixed");
    let repair = airlock_apply(&["repair", &set, "--out", &fixed.display().to_string()]);
    assert_eq!(repair.code, 3, "{}", repair.stderr);
    assert!(!fixed.join("demo-1.1.0.airlock.index").exists());
}

#[test]
fn a_volume_from_another_build_of_the_same_release_is_caught() {
    let demo = Demo::start();
    let work = tempfile::tempdir().unwrap();
    let first = big_release(&demo, "1.1.0", 12, 17);
    let a = split(&first, "4M", None, &work.path().join("a"));
    // The same release built again at another time: another created_at,
    // so other chunks and another manifest.
    let out = work.path().join("second");
    let built = std::process::Command::new(bin("airlock-build"))
        .args(["--no-progress", "build", "--spec"])
        .arg(demo.root.join("release-1.1.0/bundle.toml"))
        .arg("--key")
        .arg(demo.keys.secret("release"))
        .arg("--out")
        .arg(&out)
        .env("SOURCE_DATE_EPOCH", (build_epoch() + 3600).to_string())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let second = String::from_utf8_lossy(&built.stdout).trim().to_owned();
    assert_ne!(
        sha256_file(Path::new(&first)),
        sha256_file(Path::new(&second))
    );
    let b = split(&second, "4M", None, &work.path().join("b"));
    let (va, vb) = (volumes(&a), volumes(&b));
    let before = node_state(&demo);
    for (which, reason) in [
        (2, "does not match its SHA-256 in the index"),
        (0, "does not match its SHA-256 in the index"),
    ] {
        let set = work.path().join(format!("mixed-{which}"));
        fs::create_dir_all(&set).unwrap();
        for f in fs::read_dir(a.parent().unwrap()).unwrap() {
            let f = f.unwrap().path();
            fs::copy(&f, set.join(f.file_name().unwrap())).unwrap();
        }
        fs::copy(&vb[which], set.join(va[which].file_name().unwrap())).unwrap();
        let run = airlock_apply(&["apply", &set.display().to_string(), "--site", &demo.site()]);
        assert_eq!(run.code, 3, "{}", run.stderr);
        let name = va[which]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            run.stderr.contains(&name) && run.stderr.contains(reason),
            "volume {which}: {}",
            run.stderr
        );
    }
    assert_eq!(
        node_state(&demo),
        before,
        "a refused bundle changed the node"
    );
}

#[test]
fn a_short_copy_is_refused_by_inspect_and_plan() {
    let demo = Demo::start();
    let bundle = demo.release("1.1.0", |_| {});
    let work = tempfile::tempdir().unwrap();
    let short = work.path().join("demo-1.1.0.airlock");
    let bytes = fs::read(&bundle).unwrap();
    fs::write(&short, &bytes[..bytes.len() - 600]).unwrap();
    let short = short.display().to_string();
    let inspect = airlock_build(&["inspect", &short]);
    assert_eq!(inspect.code, 3, "{}", inspect.stderr);
    assert!(
        inspect.stderr.contains("the bundle is incomplete"),
        "{}",
        inspect.stderr
    );
    let before = node_state(&demo);
    for command in ["plan", "verify", "apply"] {
        let run = airlock_apply(&[command, &short, "--site", &demo.site()]);
        assert_eq!(run.code, 3, "{command}: {}", run.stderr);
        assert!(
            run.stderr.contains("the bundle is incomplete")
                && run.stderr.contains("copy the bundle again"),
            "{command}: {}",
            run.stderr
        );
    }
    let check = airlock_apply(&["check-media", &short]);
    assert_eq!(check.code, 3, "{}", check.stderr);
    assert_eq!(
        node_state(&demo),
        before,
        "a refused bundle changed the node"
    );
}
