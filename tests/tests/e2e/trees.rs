//! Real releases: folder trees installed as a whole, files installed by
//! rename, and a data-format migration between the install and the start.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use airlock_formats::manifest::{PayloadInfo, FORMAT_MARKER};
use airlock_formats::{
    write_bundle, BundlePath, FileEntry, Hooks, Manifest, Role, SecretKey, Sha256Digest, Tree,
    TreeLink,
};

use crate::demo::{copy_tree, Demo};
use crate::harness::*;

/// Writes a tree of a few hundred files shaped like a real release: a
/// Python-style package whose folders all hold `__init__.py`, copies of this
/// repository's own sources and docs (real files), an executable, an empty
/// folder, and two relative links (to a file and to a folder).
fn release_tree(root: &Path) {
    for p in 0..20 {
        for s in 0..6 {
            let dir = root.join(format!("lib/pkg{p}/sub{s}"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("__init__.py"), format!("# pkg{p}.sub{s}\n")).unwrap();
            fs::write(
                dir.join("models.py"),
                format!("class Model{p}{s}:\n    pass\n").repeat(20),
            )
            .unwrap();
        }
        fs::write(root.join(format!("lib/pkg{p}/__init__.py")), "").unwrap();
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (from, to) in [("docs", "share/docs"), ("applier/src", "share/src/applier")] {
        copy_tree(&repo.join(from), &root.join(to));
    }
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(root.join("var/empty")).unwrap();
    symlink("lib/pkg1/sub1/__init__.py", root.join("current.py")).unwrap();
    symlink("../lib/pkg2", root.join("bin/pkg")).unwrap();
}

fn file_count(root: &Path) -> usize {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter(|e| e.as_ref().unwrap().file_type().is_file())
        .count()
}

/// `diff -r --no-dereference A B` (links compared as links): empty when
/// the two trees are the same.
fn diff(a: &Path, b: &Path) -> String {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A release edit: the tree `assets` (from `source`) goes to
/// `/opt/demo/assets`.
fn with_tree(source: &Path) -> impl FnOnce(&Path) + '_ {
    move |release: &Path| {
        let _ = fs::remove_dir_all(release.join("assets"));
        copy_tree(source, &release.join("assets"));
        let spec = release.join("bundle.toml");
        let mut text = fs::read_to_string(&spec).unwrap();
        text.push_str("\n[[tree]]\nsource = \"assets\"\ninstall_path = \"/opt/demo/assets\"\n");
        fs::write(&spec, text).unwrap();
    }
}

fn site_with_assets(demo: &Demo) -> PathBuf {
    // The demo site has a `[trees]` table already, for its `static` tree.
    demo.edit_site(|s| s.replace("[trees]\n", "[trees]\nassets = \"node/assets\"\n"));
    demo.site_dir().join("node/assets")
}

#[test]
fn a_tree_installs_exactly_upgrades_by_removing_and_rolls_back_whole() {
    let demo = Demo::start();
    let installed = site_with_assets(&demo);
    let work = tempfile::tempdir().unwrap();
    let v1 = work.path().join("v1");
    release_tree(&v1);
    let files = file_count(&v1);
    assert!(files > 250, "only {files} files");

    let bundle = demo.release("1.1.0", with_tree(&v1));
    let inspect = airlock_build(&["inspect", &bundle]).ok();
    assert!(
        inspect.stdout.contains(&format!(
            "tree          assets -> /opt/demo/assets: {files} file(s)"
        )),
        "{}",
        inspect.stdout
    );
    let plan = airlock_apply(&["plan", &bundle, "--site", &demo.site()]).ok();
    let line = plan
        .stdout
        .lines()
        .find(|l| l.contains("install tree"))
        .unwrap_or_else(|| panic!("no tree line:\n{}", plan.stdout));
    assert!(
        line.contains(&format!(
            "assets -> `{}`: {files} files",
            installed.display()
        )),
        "{line}"
    );
    assert!(
        line.contains("staged beside it, installed by rename; a new folder"),
        "{line}"
    );
    airlock_apply(&["apply", &bundle, "--site", &demo.site()]).ok();
    assert_eq!(diff(&v1, &installed), "");
    assert_eq!(
        fs::metadata(installed.join("bin/tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        fs::read_link(installed.join("bin/pkg")).unwrap(),
        Path::new("../lib/pkg2")
    );

    // 1.2.0 drops a package and a doc and changes a file.
    let v2 = work.path().join("v2");
    copy_tree(&v1, &v2);
    fs::remove_dir_all(v2.join("lib/pkg0")).unwrap();
    fs::remove_file(v2.join("share/docs/FORMAT.md")).unwrap();
    fs::write(v2.join("lib/pkg3/sub3/models.py"), "changed\n").unwrap();
    let next = demo.release("1.2.0", with_tree(&v2));
    let plan = airlock_apply(&["plan", &next, "--site", &demo.site()]).ok();
    let gone = file_count(&v1.join("lib/pkg0")) + 1;
    assert!(
        plan.stdout
            .contains(&format!("({gone} not in the new one: removed)")),
        "{}",
        plan.stdout
    );
    airlock_apply(&["apply", &next, "--site", &demo.site()]).ok();
    assert_eq!(diff(&v2, &installed), "");
    assert!(!installed.join("lib/pkg0").exists());
    // The replaced tree moved into the backup, nothing is left beside it.
    let leftovers: Vec<_> = fs::read_dir(installed.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".airlock-"))
        .collect();
    assert_eq!(leftovers, Vec::<String>::new());

    // `rollback` puts 1.1.0's tree back from the backup, files removed by
    // 1.2.0 included.
    airlock_apply(&["rollback", "--site", &demo.site(), "--yes"]).ok();
    assert_eq!(diff(&v1, &installed), "");

    // A 1.3.0 that fails its health check is rolled back: the tree swaps back.
    demo.edit_site(|s| s.replace("health_wait_secs = 15", "health_wait_secs = 2"));
    let broken = demo.release("1.3.0", |release| {
        with_tree(&v2)(release);
        fs::write(release.join("service.conf"), "healthy = false\n").unwrap();
        let spec = release.join("bundle.toml");
        let mut text = fs::read_to_string(&spec).unwrap();
        text.push_str(
            "\n[[file]]\nsource = \"service.conf\"\ninstall_path = \"/opt/demo/service.conf\"\n",
        );
        fs::write(&spec, text).unwrap();
    });
    // -v: the undo actions' start lines name the tree.
    let run = airlock_apply(&["-v", "apply", &broken, "--site", &demo.site()]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stderr.contains("restore tree: assets"),
        "{}",
        run.stderr
    );
    assert_eq!(diff(&v1, &installed), "");
    assert!(demo.healthy());
}

#[test]
fn a_tree_link_that_leaves_the_tree_is_refused_at_build_and_at_read() {
    let demo = Demo::start();
    site_with_assets(&demo);
    let work = tempfile::tempdir().unwrap();
    let evil = work.path().join("evil");
    fs::create_dir_all(evil.join("css")).unwrap();
    fs::write(evil.join("css/site.css"), "body {}\n").unwrap();
    symlink("../../../../etc/passwd", evil.join("css/passwd")).unwrap();
    let release = demo.root.join("release-evil");
    copy_tree(&demo.root.join("release"), &release);
    with_tree(&evil)(&release);
    let out = demo.root.join("out-evil");
    let run = airlock_build(&[
        "--no-progress",
        "build",
        "--spec",
        &release.join("bundle.toml").display().to_string(),
        "--key",
        &demo.keys.secret("release"),
        "--out",
        &out.display().to_string(),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("css/passwd"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("`../../../../etc/passwd` leaves the tree"),
        "{}",
        run.stderr
    );
    assert!(!out.join("demo-1.1.0.airlock").exists());

    // The same link in a hand-made bundle, signed with a trusted key, is
    // refused when read, and nothing changes.
    let key = SecretKey::from_minisign(
        &fs::read_to_string(demo.keys.secret("release")).unwrap(),
        None,
    )
    .unwrap();
    let bundle = hand_made(&out, &key);
    let before = sha256_tree(&demo.site_dir().join("node"));
    let run = airlock_apply(&[
        "apply",
        &bundle.display().to_string(),
        "--site",
        &demo.site(),
    ]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("link `css/passwd` -> `../../etc/passwd` leaves the tree"),
        "{}",
        run.stderr
    );
    assert_eq!(sha256_tree(&demo.site_dir().join("node")), before);
}

/// A bundle of tree `assets` with one file and a link out of the tree.
fn hand_made(out: &Path, key: &SecretKey) -> PathBuf {
    let data = b"body {}\n";
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    tar.append_data(&mut header, "trees/assets/css/site.css", &data[..])
        .unwrap();
    let payload = zstd::encode_all(&tar.into_inner().unwrap()[..], 3).unwrap();
    let manifest = Manifest {
        format: FORMAT_MARKER.into(),
        name: "demo".into(),
        version: semver::Version::new(1, 1, 0),
        platform: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
        upgrades_from: semver::VersionReq::parse(">=1.0.0").unwrap(),
        min_applier_version: semver::Version::new(0, 2, 0),
        rolling_allowed: true,
        created_at: 1_767_225_600,
        expires_at: None,
        hooks: Hooks::default(),
        trees: vec![Tree {
            name: "assets".into(),
            install_path: "/opt/demo/assets".into(),
            dir_mode: 0o755,
            dirs: vec![BundlePath::parse("css").unwrap()],
            links: vec![TreeLink {
                path: BundlePath::parse("css/passwd").unwrap(),
                target: "../../etc/passwd".into(),
            }],
        }],
        files: vec![FileEntry {
            path: BundlePath::parse("trees/assets/css/site.css").unwrap(),
            role: Role::Tree,
            size: data.len() as u64,
            mode: 0o644,
            sha256: Sha256Digest::of(data),
            name: None,
            install_path: None,
            migration: None,
        }],
        payload: PayloadInfo {
            compression: "zstd".into(),
            size: payload.len() as u64,
            chunk_size: 64 * 1024,
            chunks: vec![Sha256Digest::of(&payload)],
            unpacked_size: data.len() as u64,
        },
    };
    // Serialized by hand: `to_json` validates, and this manifest is invalid.
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let signature = key.sign(&bytes, "timestamp:0");
    fs::create_dir_all(out).unwrap();
    let path = out.join("demo-1.1.0-evil.airlock");
    let file = write_bundle(
        Vec::new(),
        &bytes,
        &[signature],
        &payload[..],
        payload.len() as u64,
        0,
    )
    .unwrap();
    fs::write(&path, file).unwrap();
    path
}

/// A data-format migration as a `pre_start` hook: rewrites
/// `$AIRLOCK_RAFT_DIR/format` from v1 to v2, in two halves. The first time
/// it stops half way and waits (the test kills it there); run again, it
/// finishes, as an idempotent tool does.
const DATA_MIGRATION: &str = r#"#!/bin/sh
set -eu
data="$AIRLOCK_RAFT_DIR"
echo "run" >> "$data/../pre_start.log"
if [ "$(cat "$data/format")" = "v2" ]; then exit 0; fi
echo "v1.5 from $AIRLOCK_FROM_VERSION to $AIRLOCK_TO_VERSION" > "$data/format"
if [ ! -f "$data/../pre_start.once" ]; then
    touch "$data/../pre_start.once"
    echo $$ > "$data/../pre_start.pid"
    sleep 60
fi
echo "v2" > "$data/format"
"#;

fn data_migration(on_interrupt: &'static str) -> impl FnOnce(&Path) {
    move |release: &Path| {
        fs::write(release.join("hooks/migrate-data.sh"), DATA_MIGRATION).unwrap();
        let spec = release.join("bundle.toml");
        let text = fs::read_to_string(&spec).unwrap().replace(
            "[hooks]\n",
            &format!(
                "[hooks]\npre_start = \"hooks/migrate-data.sh\"\npre_start_on_interrupt = \"{on_interrupt}\"\n"
            ),
        );
        fs::write(&spec, text).unwrap();
    }
}

/// Kills the apply inside its `pre_start` hook, and the hook with it.
fn kill_inside_pre_start(demo: &Demo, bundle: &str) {
    let node = demo.site_dir().join("node");
    let (_, code, stderr) = run_with_signal(
        &bin("airlock-apply"),
        &[],
        &["apply", bundle, "--site", &demo.site()],
        "KILL",
        |e, _| {
            if e.step == "pre_start" && e.status == "start" {
                let deadline = Instant::now() + std::time::Duration::from_secs(10);
                while !node.join("pre_start.pid").exists() {
                    assert!(Instant::now() < deadline, "the hook did not start");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                true
            } else {
                false
            }
        },
    );
    assert_eq!(code, -1, "{stderr}");
    let pid = fs::read_to_string(node.join("pre_start.pid")).unwrap();
    // The hook runs in a process group of its own: kill all of it (the
    // fifth field of /proc/PID/stat is the group).
    let stat = fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap();
    let group = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(2))
        .unwrap()
        .to_owned();
    let killed = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .status()
        .unwrap();
    assert!(
        killed.success(),
        "the hook's process group {group} was not killed"
    );
    assert!(
        fs::read_to_string(node.join("data/format"))
            .unwrap()
            .starts_with("v1.5"),
        "the hook did not stop half way"
    );
}

fn site_with_data(demo: &Demo) {
    let data = demo.site_dir().join("node/data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("format"), "v1\n").unwrap();
    demo.edit_site(|s| s.replace("[data]\n", "[data]\nraft_dir = \"node/data\"\n"));
}

#[test]
fn a_data_migration_killed_half_way_is_run_again_by_resume() {
    let demo = Demo::start();
    site_with_data(&demo);
    let bundle = demo.release("1.1.0", data_migration("rerun"));
    let plan = airlock_apply(&["plan", &bundle, "--site", &demo.site()]).ok();
    let pre_start = plan.stdout.find("run hook `hooks/pre_start/").unwrap();
    let start = plan.stdout.find(". start ").unwrap();
    let migrate = plan.stdout.rfind(". migrate ").unwrap();
    assert!(migrate < pre_start && pre_start < start, "{}", plan.stdout);
    assert!(
        plan.stdout.contains("if interrupted, resume runs it again"),
        "{}",
        plan.stdout
    );
    kill_inside_pre_start(&demo, &bundle);

    let resumed = airlock_apply(&["resume", "--site", &demo.site()]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(
        resumed.stderr.contains("on_interrupt = rerun"),
        "{}",
        resumed.stderr
    );
    let node = demo.site_dir().join("node");
    assert_eq!(
        fs::read_to_string(node.join("data/format")).unwrap(),
        "v2\n"
    );
    assert_eq!(
        fs::read_to_string(node.join("pre_start.log")).unwrap(),
        "run\nrun\n"
    );
    assert_eq!(fs::read_to_string(node.join("RELEASE")).unwrap(), "1.1.0\n");
    assert!(demo.healthy());
    let status = airlock_apply(&["--json", "status", "--site", &demo.site()]).ok();
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(status["installed"]["version"], "1.1.0", "{status}");
}

#[test]
fn a_data_migration_killed_half_way_is_rolled_back_when_the_bundle_says_so() {
    let demo = Demo::start();
    site_with_data(&demo);
    let node = demo.site_dir().join("node");
    let data_before = sha256_tree(&node.join("data"));
    let bundle = demo.release("1.1.0", data_migration("rollback"));
    kill_inside_pre_start(&demo, &bundle);

    let resumed = airlock_apply(&["resume", "--site", &demo.site()]);
    assert_eq!(resumed.code, 4, "{}", resumed.stderr);
    assert_eq!(sha256_tree(&node.join("data")), data_before);
    assert_eq!(
        fs::read_to_string(node.join("data/format")).unwrap(),
        "v1\n"
    );
    assert_eq!(fs::read_to_string(node.join("RELEASE")).unwrap(), "1.0.0\n");
    assert!(demo.healthy());
}

#[test]
fn a_200_mib_tree_installs_by_rename_and_the_downtime_is_reported() {
    let demo = Demo::start();
    let installed = site_with_assets(&demo);
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("big");
    // 200 MiB in 400 files of 512 KiB, each different and barely
    // compressible, in 20 folders.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..400 {
        let dir = source.join(format!("part{:02}", i % 20));
        fs::create_dir_all(&dir).unwrap();
        let mut bytes = Vec::with_capacity(512 * 1024);
        while bytes.len() < 512 * 1024 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.extend_from_slice(&state.to_le_bytes());
        }
        fs::write(dir.join(format!("blob{i:03}.bin")), bytes).unwrap();
    }
    let bundle = demo.release("1.1.0", with_tree(&source));
    airlock_apply(&["apply", &bundle, "--site", &demo.site()]).ok();
    let next = demo.release("1.2.0", with_tree(&source));
    let run = airlock_apply(&["apply", &next, "--site", &demo.site()]).ok();
    assert_eq!(diff(&source, &installed), "");
    let done = run
        .stderr
        .lines()
        .find(|l| l.contains("ok done:"))
        .unwrap()
        .to_owned();
    let down = done
        .split("service down ")
        .nth(1)
        .and_then(|s| s.split('s').next())
        .unwrap()
        .to_owned();
    // The copy a copy-based install does while the service is down.
    let copy_to = work.path().join("copy");
    let started = Instant::now();
    let status = Command::new("cp")
        .arg("-a")
        .arg(&source)
        .arg(&copy_to)
        .status()
        .unwrap();
    assert!(status.success());
    let copy = started.elapsed().as_secs_f64();
    eprintln!(
        "200 MiB tree, 1.1.0 -> 1.2.0: service down {down}s with the install by rename; `cp -a` of the same tree alone takes {copy:.2}s\n{done}"
    );
}

/// A small tree of nested folders, a link, and `marker` in `version.txt`.
fn small_tree(root: &Path, marker: &str) {
    for d in ["a/b", "c"] {
        fs::create_dir_all(root.join(d)).unwrap();
        fs::write(root.join(d).join("__init__.py"), format!("# {d}\n")).unwrap();
    }
    fs::write(root.join("version.txt"), format!("{marker}\n")).unwrap();
    fs::write(root.join(format!("only-in-{marker}.txt")), "x\n").unwrap();
    symlink("a/b/__init__.py", root.join("current.py")).unwrap();
}

/// Names beside `folder` that an apply staged or set aside (`.NAME.airlock-…`).
fn leftovers_beside(folder: &Path) -> Vec<String> {
    fs::read_dir(folder.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".airlock-"))
        .collect()
}

#[test]
fn an_apply_that_dies_inside_a_tree_install_is_undone_whole_by_resume() {
    let demo = Demo::start();
    let installed = site_with_assets(&demo);
    let work = tempfile::tempdir().unwrap();
    let (v1, v2) = (work.path().join("v1"), work.path().join("v2"));
    small_tree(&v1, "v1");
    small_tree(&v2, "v2");
    airlock_apply(&[
        "apply",
        &demo.release("1.1.0", with_tree(&v1)),
        "--site",
        &demo.site(),
    ])
    .ok();
    assert_eq!(diff(&v1, &installed), "");
    let next = demo.release("1.2.0", with_tree(&v2));
    // Dies after the exchange, with the new tree live and the old one
    // staged; then between the two renames a filesystem without
    // RENAME_EXCHANGE needs, with no tree at the install path at all.
    for (failpoints, folder_there) in [
        ("tree-after-exchange=panic", true),
        ("tree-no-exchange=return;tree-between-renames=panic", false),
    ] {
        let died = airlock_apply_failpoints(failpoints, &["apply", &next, "--site", &demo.site()]);
        assert_eq!(
            died.code, 101,
            "{failpoints}: did not die:\n{}",
            died.stderr
        );
        assert_eq!(installed.exists(), folder_there, "{failpoints}");
        let resumed = airlock_apply(&["-v", "resume", "--site", &demo.site()]);
        assert_eq!(resumed.code, 4, "{failpoints}:\n{}", resumed.stderr);
        assert!(
            resumed.stderr.contains("restore tree: assets"),
            "{}",
            resumed.stderr
        );
        assert_eq!(diff(&v1, &installed), "", "{failpoints}");
        assert_eq!(leftovers_beside(&installed), Vec::<String>::new());
        assert!(demo.healthy());
    }
    // Without the exchange, the two renames install the tree, and the
    // rollback of a failed start swaps it back the same way.
    let run = airlock_apply_failpoints(
        "tree-no-exchange=return",
        &["apply", &next, "--site", &demo.site()],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("two renames (this filesystem cannot exchange)"),
        "{}",
        run.stderr
    );
    assert_eq!(diff(&v2, &installed), "");
    airlock_apply(&["rollback", "--site", &demo.site(), "--yes"]).ok();
    assert_eq!(diff(&v1, &installed), "");
    assert_eq!(leftovers_beside(&installed), Vec::<String>::new());
}

#[test]
fn a_data_migration_that_fails_rolls_back_every_database_and_the_raft_data() {
    let demo = Demo::start();
    site_with_data(&demo);
    // A second database that no SQL migration of the bundle touches.
    let node = demo.site_dir().join("node");
    let other = node.join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('before');")
        .unwrap();
    demo.edit_site(|s| {
        s.replace(
            "databases = { main = \"node/app.db\" }",
            "databases = { main = \"node/app.db\", other = \"node/other.db\" }",
        )
    });
    let data_before = sha256_tree(&node.join("data"));
    // The demo's database `main` is created by the bundle's migrations.
    assert!(!node.join("app.db").exists());
    let other_before = sqlite_dump_hash(&other);
    let bundle = demo.release("1.1.0", |release| {
        fs::write(
            release.join("hooks/migrate-data.sh"),
            "#!/bin/sh\nset -eu\n\
             printf 'main=%s other=%s\\n' \"$AIRLOCK_DB_MAIN\" \"$AIRLOCK_DB_OTHER\" > \"$AIRLOCK_RAFT_DIR/../env.txt\"\n\
             echo v2 > \"$AIRLOCK_RAFT_DIR/format\"\n\
             cp \"$AIRLOCK_DB_MAIN\" \"$AIRLOCK_DB_OTHER\"\n\
             echo 'cannot convert segment 7: bad checksum' >&2\nexit 3\n",
        )
        .unwrap();
        let spec = release.join("bundle.toml");
        let text = fs::read_to_string(&spec)
            .unwrap()
            .replace("[hooks]\n", "[hooks]\npre_start = \"hooks/migrate-data.sh\"\n");
        fs::write(&spec, text).unwrap();
    });
    // The hook converts the Raft data, overwrites the other database through
    // the path it is given, and fails.
    let run = Command::new(bin("airlock-apply"))
        .args(["apply", &bundle, "--site", &demo.site()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("failed at step `pre_start`")
            && stderr.contains("cannot convert segment 7"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(node.join("env.txt")).unwrap(),
        format!(
            "main={} other={}\n",
            node.join("app.db").display(),
            other.display()
        )
    );
    assert_eq!(sha256_tree(&node.join("data")), data_before);
    assert!(!node.join("app.db").exists());
    assert_eq!(sqlite_dump_hash(&other), other_before);
    assert_eq!(fs::read_to_string(node.join("RELEASE")).unwrap(), "1.0.0\n");
    assert!(demo.healthy());
}

#[test]
fn a_tree_may_not_replace_an_install_root_and_the_root_of_everything_is_no_root() {
    let demo = Demo::start();
    let assets = demo.root.join("assets");
    small_tree(&assets, "v1");
    // Unmapped, the tree's own install path is the demo's default root
    // `node` (the folder of node/RELEASE): it would replace the root whole.
    let node = demo.site_dir().join("node");
    let bundle = demo.release("1.1.0", |release| {
        copy_tree(&assets, &release.join("assets"));
        let spec = release.join("bundle.toml");
        let mut text = fs::read_to_string(&spec).unwrap();
        text.push_str(&format!(
            "\n[[tree]]\nsource = \"assets\"\ninstall_path = \"{}\"\n",
            node.display()
        ));
        fs::write(&spec, text).unwrap();
    });
    let before = fs::read_dir(&node).unwrap().count();
    let run = airlock_apply(&["apply", &bundle, "--site", &demo.site()]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "tree `node` would be installed at `{}`, not below the site's install roots",
            node.display()
        )),
        "{}",
        run.stderr
    );
    assert_eq!(fs::read_dir(&node).unwrap().count(), before);
    assert_eq!(fs::read_to_string(node.join("RELEASE")).unwrap(), "1.0.0\n");

    demo.edit_site(|s| format!("install_roots = [\"/\"]\n{s}"));
    let run = airlock_apply(&["verify", &bundle, "--site", &demo.site()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("install_roots: `/` would let a bundle write anywhere"),
        "{}",
        run.stderr
    );
}
