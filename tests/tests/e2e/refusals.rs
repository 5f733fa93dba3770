//! Bad bundles are refused with a clear message, and nothing on the node changes.

use std::fs;
use std::path::{Path, PathBuf};

use airlock_formats::manifest::{PayloadInfo, FORMAT_MARKER};
use airlock_formats::{
    write_bundle, BundlePath, FileEntry, Hooks, Manifest, Role, SecretKey, Sha256Digest,
};

use crate::harness::*;

fn secret(keys: &Keys, name: &str) -> SecretKey {
    SecretKey::from_minisign(&fs::read_to_string(keys.secret(name)).unwrap(), None).unwrap()
}

/// A bundle of one file, manifest path `evil`, whose payload entry is named
/// `entry` and which installs at `install_path`, signed by `signers`.
fn evil_bundle(out: &Path, entry: &[u8], install_path: &str, signers: &[SecretKey]) -> PathBuf {
    let data = b"#!/bin/sh\necho pwned\n";
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(data.len() as u64);
    header.set_mode(0o755);
    // Written raw: the tar crate itself refuses to set a `..` path.
    header.as_gnu_mut().unwrap().name[..entry.len()].copy_from_slice(entry);
    header.set_cksum();
    let mut tar = tar::Builder::new(Vec::new());
    tar.append(&header, &data[..]).unwrap();
    let payload = zstd::encode_all(&tar.into_inner().unwrap()[..], 3).unwrap();
    let manifest = Manifest {
        format: FORMAT_MARKER.into(),
        name: "etcd-node".into(),
        version: semver::Version::new(1, 1, 0),
        platform: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
        upgrades_from: semver::VersionReq::parse("^1.0.0").unwrap(),
        min_applier_version: semver::Version::new(0, 1, 0),
        rolling_allowed: true,
        created_at: 1_767_225_600,
        expires_at: None,
        hooks: Hooks::default(),
        trees: Vec::new(),
        files: vec![FileEntry {
            path: BundlePath::parse("evil").unwrap(),
            role: Role::File,
            size: data.len() as u64,
            mode: 0o755,
            sha256: Sha256Digest::of(data),
            name: None,
            install_path: Some(install_path.into()),
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
    let bytes = manifest.to_json().unwrap();
    let signatures: Vec<_> = signers
        .iter()
        .map(|k| k.sign(&bytes, "timestamp:0"))
        .collect();
    let path = out.join(format!(
        "etcd-node-1.1.0-{}.airlock",
        Sha256Digest::of(format!("{entry:?}{install_path}").as_bytes())
    ));
    let file = write_bundle(
        Vec::new(),
        &bytes,
        &signatures,
        &payload[..],
        payload.len() as u64,
        0,
    )
    .unwrap();
    fs::write(&path, file).unwrap();
    path
}

fn replace_once(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in bundle");
    bytes[at..at + to.len()].copy_from_slice(to);
}

#[test]
fn bad_bundles_are_refused_and_the_node_is_unchanged() {
    let keys = Keys::new(&["release", "second", "stranger"]);
    // The site needs two of its two release keys.
    let node = EtcdNode::start(&[&keys.public("release"), &keys.public("second")], 2);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let spec = write_release(&work.path().join("release"), "1.1.0", "^1.0.0", false);
    let good = build_bundle(&spec, &keys.secret("release"), &out);
    let once_signed = work.path().join("once-signed.airlock");
    fs::copy(&good, &once_signed).unwrap();
    airlock_build(&[
        "sign",
        &good.display().to_string(),
        "--key",
        &keys.secret("second"),
    ])
    .ok();
    let good_bytes = fs::read(&good).unwrap();

    let tampered_payload = work.path().join("tampered-payload.airlock");
    let mut bytes = good_bytes.clone();
    let at = bytes.len() - 1024 - 4096; // inside the payload, before the tar's end blocks
    bytes[at] ^= 0x01;
    fs::write(&tampered_payload, &bytes).unwrap();

    let tampered_manifest = work.path().join("tampered-manifest.airlock");
    let mut bytes = good_bytes.clone();
    replace_once(
        &mut bytes,
        b"\"/opt/etcd/bin/etcd\"",
        b"\"/opt/etcd/bin/etcX\"",
    );
    fs::write(&tampered_manifest, &bytes).unwrap();

    let untrusted_spec = write_release(&work.path().join("untrusted"), "1.1.0", "^1.0.0", false);
    let untrusted = build_bundle(
        &untrusted_spec,
        &keys.secret("stranger"),
        &work.path().join("untrusted-out"),
    );

    let both = [secret(&keys, "release"), secret(&keys, "second")];
    // Inside the node's install roots (the folder of node/bin/etcd and of
    // node/RELEASE), but its payload entry climbs out with `..`.
    let inside = node.root.join("node/evil").display().to_string();
    let escaping = evil_bundle(work.path(), b"../evil", &inside, &both);
    // Well-formed and signed by both keys, but installing where the site
    // never said: a folder outside, and through a link inside the node's
    // folder that points outside.
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let elsewhere = evil_bundle(
        work.path(),
        b"evil",
        &outside.join("evil").display().to_string(),
        &both,
    );
    std::os::unix::fs::symlink(&outside, node.root.join("node/link")).unwrap();
    let through_link = evil_bundle(
        work.path(),
        b"evil",
        &node.root.join("node/link/evil").display().to_string(),
        &both,
    );

    let downgrade_spec = write_release(&work.path().join("old"), "0.9.0", "*", false);
    let downgrade = build_bundle(
        &downgrade_spec,
        &keys.secret("release"),
        &work.path().join("old-out"),
    );
    airlock_build(&[
        "sign",
        &downgrade.display().to_string(),
        "--key",
        &keys.secret("second"),
    ])
    .ok();

    let cases: [(&str, &Path, &str); 8] = [
        (
            "tampered payload byte",
            &tampered_payload,
            "does not match its digest in the manifest",
        ),
        (
            "tampered manifest",
            &tampered_manifest,
            "does not match the manifest",
        ),
        (
            "untrusted signer",
            &untrusted,
            "is not trusted by this site",
        ),
        (
            "too few signatures",
            &once_signed,
            "signed by 1 trusted key(s), the threshold is 2",
        ),
        (
            "entry with ../",
            &escaping,
            "`..` components are not allowed",
        ),
        (
            "install outside the install roots",
            &elsewhere,
            "not below the site's install roots",
        ),
        (
            "install through a link out of the install roots",
            &through_link,
            "not below the site's install roots",
        ),
        (
            "downgrade",
            &downgrade,
            "older than the installed 1.0.0 (a downgrade)",
        ),
    ];

    let before = node.snapshot();
    let files_before = node.file_snapshot();
    for (name, bundle, want) in cases {
        for command in ["verify", "apply"] {
            let run = airlock_apply(&[
                command,
                &bundle.display().to_string(),
                "--site",
                &node.site(),
            ]);
            eprintln!("{name} ({command}): exit {}\n{}", run.code, run.stderr);
            assert_eq!(
                run.code, 3,
                "{name} ({command}): expected exit 3 (refused):\n{}",
                run.stderr
            );
            assert!(
                run.stderr.contains(want),
                "{name} ({command}): expected `{want}` in:\n{}",
                run.stderr
            );
            assert!(
                run.stderr.contains("help:"),
                "{name} ({command}): no help line:\n{}",
                run.stderr
            );
            assert_eq!(
                node.snapshot(),
                before,
                "{name} ({command}) changed the node"
            );
            assert_eq!(
                node.file_snapshot(),
                files_before,
                "{name} ({command}) changed database or Raft files"
            );
        }
    }
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!node.root.join("node/evil").exists());
    assert_eq!(
        fs::read_dir(node.root.join("backups")).unwrap().count(),
        0,
        "a refused bundle made a backup"
    );
    assert!(node.healthy());
    assert_eq!(node.count_keys(), KEY_COUNT);

    // The good bundle, signed by both keys, passes verification.
    let run = airlock_apply(&[
        "verify",
        &good.display().to_string(),
        "--site",
        &node.site(),
    ])
    .ok();
    assert!(run.stderr.contains("may be applied here"), "{}", run.stderr);

    // A site that names the outside folder among its install roots accepts
    // the bundle that installs there, and `plan` shows the roots.
    let site = node.root.join("site.toml");
    let text = fs::read_to_string(&site).unwrap();
    fs::write(
        &site,
        format!(
            "install_roots = [\"node\", \"{}\"]\n{text}",
            outside.display()
        ),
    )
    .unwrap();
    let elsewhere = elsewhere.display().to_string();
    let run = airlock_apply(&["verify", &elsewhere, "--site", &node.site()]).ok();
    assert!(run.stderr.contains("may be applied here"), "{}", run.stderr);
    let run = airlock_apply(&["plan", &elsewhere, "--site", &node.site()]).ok();
    assert!(
        run.stdout.contains(&format!(
            "install roots: every install lands below `{}`, `{}` (install_roots in site.toml)",
            node.root.join("node").display(),
            outside.display()
        )),
        "{}",
        run.stdout
    );
}
