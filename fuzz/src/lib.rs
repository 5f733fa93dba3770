//! What each fuzz target does with its input (fuzz/README.md).
//!
//! Every function takes the fuzzer's bytes, runs one of airlock's readers of
//! untrusted input on them, and, when the reader accepts them, asserts what
//! acceptance promises. A panic is a finding. The functions are also run by
//! the workspace's stable test over the seed corpus and the regressions
//! (tests/tests/fuzz_corpus.rs), so a finding stays fixed.

#![forbid(unsafe_code)]
// A fuzz target reports a broken promise by panicking; the scratch folder
// is its own, so std::fs errors need no path.
#![allow(clippy::unwrap_used, clippy::panic, clippy::disallowed_methods)]

use std::io::Cursor;
use std::path::Path;

use airlock_applier::steps::stage::StageSink;
use airlock_formats::{
    read_bundle, BundlePath, Manifest, PublicKey, SecretKey, Signature, Trust, TrustUpdate,
};

/// A key trusted by the bundle reader target: the seed corpus is signed by it
/// (fuzz/corpus/README.md says how it was made), so signature checking runs
/// on real signatures as well as on mutated ones.
pub const SEED_PUBLIC_KEY: &str = include_str!("../corpus/seed.pub");

thread_local! {
    /// A scratch folder for each thread: the stable test runs the targets on
    /// several threads at once, and the staging sink empties its folder.
    static SCRATCH: tempfile::TempDir = tempfile::tempdir().unwrap();
}

/// The bundle reader, from bytes to the applier's staging sink: a bundle it
/// accepts has every manifest file staged with the manifest's size and
/// SHA-256, below the staging folder, and nothing else there. The trust check
/// runs on the header (with the seed key) but does not stop the read, so
/// the payload is fuzzed too.
pub fn bundle_reader(data: &[u8]) {
    let root = SCRATCH.with(|dir| dir.path().join("staging"));
    let mut sink = StageSink::create(&root, Box::new(|_| {})).unwrap();
    let trust = Trust::new(vec![PublicKey::from_minisign(SEED_PUBLIC_KEY).unwrap()], 1).unwrap();
    let result = read_bundle(
        Cursor::new(data),
        |header| {
            let _ = trust.check(&header.manifest_bytes, &header.signatures);
            Ok(())
        },
        Some(&mut sink),
    );
    let Ok(header) = result else {
        return;
    };
    let mut staged = 0;
    for entry in &header.manifest.files {
        let path = entry.path.join_to(&root);
        assert!(
            path.starts_with(&root),
            "{} left the staging folder",
            entry.path
        );
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, entry.size, "{}", entry.path);
        assert_eq!(
            airlock_formats::Sha256Digest::of(&bytes),
            entry.sha256,
            "{}",
            entry.path
        );
        staged += 1;
    }
    let on_disk = walk_files(&root);
    assert_eq!(
        on_disk, staged,
        "the staging folder holds files the manifest does not name"
    );
}

fn walk_files(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

/// The manifest parser: an accepted manifest serialises and parses back to
/// itself, and every payload path it names joins below a root.
pub fn manifest(data: &[u8]) {
    let Ok(manifest) = Manifest::from_json(data) else {
        return;
    };
    let json = manifest.to_json().unwrap();
    assert_eq!(Manifest::from_json(&json).unwrap(), manifest);
    let root = Path::new("/srv/root");
    for entry in &manifest.files {
        assert!(entry.path.join_to(root).starts_with(root));
    }
}

/// The minisign public key parser: an accepted key writes back as text that
/// parses to the same key.
pub fn public_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(key) = PublicKey::from_minisign(text) else {
        return;
    };
    let again = PublicKey::from_minisign(&key.to_minisign()).unwrap();
    assert_eq!(again.key_id(), key.key_id());
    assert_eq!(again.to_minisign(), key.to_minisign());
}

/// The minisign secret key parser (without a passphrase, so an encrypted key
/// is refused before its key derivation runs): an accepted key signs, and
/// its public key verifies the signature.
pub fn secret_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = SecretKey::is_encrypted(text);
    let Ok(key) = SecretKey::from_minisign(text, None) else {
        return;
    };
    let sig = key.sign(b"fuzz", "fuzz");
    sig.verify(&key.public_key(), b"fuzz").unwrap();
}

/// The minisign signature parser: an accepted signature writes back as text
/// that parses to the same signature, and checking it against a key never
/// panics.
pub fn signature(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sig) = Signature::from_minisign(text) else {
        return;
    };
    let again = Signature::from_minisign(&sig.to_minisign()).unwrap();
    assert_eq!(again, sig);
    let key = PublicKey::from_minisign(SEED_PUBLIC_KEY).unwrap();
    let _ = sig.verify(&key, b"fuzz");
}

/// `BundlePath::parse`, as the payload reader calls it on tar names: an
/// accepted path joins below its root with normal components only, and
/// parses back to itself.
pub fn bundle_path(data: &[u8]) {
    let Ok(path) = BundlePath::from_tar_bytes(data) else {
        return;
    };
    let root = Path::new("/srv/root");
    let joined = path.join_to(root);
    assert!(joined.starts_with(root));
    let below = joined.strip_prefix(root).unwrap();
    assert!(below
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_))));
    assert_eq!(below.components().count(), path.as_str().split('/').count());
    assert_eq!(BundlePath::parse(path.as_str()).unwrap(), path);
}

/// The trust update parser (a file `trust install` reads, and the entry a
/// bundle may carry): an accepted update writes back as a file that parses
/// to the same document, and checking it against the seed trust never
/// panics.
pub fn trust_update(data: &[u8]) {
    let Ok((update, document)) = TrustUpdate::from_json(data) else {
        return;
    };
    let (again, document_again) = TrustUpdate::from_json(&update.to_json().unwrap()).unwrap();
    assert_eq!(document_again, document);
    assert_eq!(again.trust, update.trust);
    let trust = Trust::new(vec![PublicKey::from_minisign(SEED_PUBLIC_KEY).unwrap()], 1).unwrap();
    let _ = update.check(&trust, 1);
}
