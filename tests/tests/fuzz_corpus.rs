//! The fuzz targets (fuzz/README.md) on stable Rust: each target's function
//! runs over its seed corpus, over the crashes fuzzing found (kept as
//! regressions), and over simple mutations of every seed (each prefix at a
//! stride, bytes flipped at a stride), so the promises the targets assert are
//! checked in every test run, without libFuzzer.

// A test's panic names the corpus file it was reading.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("bundle_reader", airlock_fuzz::bundle_reader),
    ("manifest", airlock_fuzz::manifest),
    ("public_key", airlock_fuzz::public_key),
    ("secret_key", airlock_fuzz::secret_key),
    ("signature", airlock_fuzz::signature),
    ("bundle_path", airlock_fuzz::bundle_path),
    ("trust_update", airlock_fuzz::trust_update),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a corpus folder entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// Prefixes and byte flips of `seed`, about `budget` of each.
fn mutations(seed: &[u8], budget: usize) -> Vec<Vec<u8>> {
    let stride = (seed.len() / budget).max(1);
    let mut out = Vec::new();
    for cut in (0..seed.len()).step_by(stride) {
        out.push(seed[..cut].to_vec());
    }
    for at in (0..seed.len()).step_by(stride) {
        let mut flipped = seed.to_vec();
        flipped[at] ^= 0x55;
        out.push(flipped);
    }
    out
}

#[test]
fn every_target_keeps_its_promises_on_the_seed_corpus_and_the_regressions() {
    let dir = fuzz_dir();
    for (name, target) in TARGETS {
        let seeds = inputs(&dir.join("corpus").join(name));
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seeds");
        for (path, bytes) in seeds
            .iter()
            .chain(&inputs(&dir.join("regressions").join(name)))
        {
            eprintln!("{name}: {}", path.display());
            target(bytes);
        }
    }
}

#[test]
fn every_target_keeps_its_promises_on_mutated_seeds() {
    let dir = fuzz_dir();
    for (name, target) in TARGETS {
        let mut runs = 0;
        for (_, seed) in inputs(&dir.join("corpus").join(name)) {
            for input in mutations(&seed, 300) {
                target(&input);
                runs += 1;
            }
        }
        eprintln!("{name}: {runs} mutated inputs");
    }
}

#[test]
fn the_seed_bundles_are_read_completely() {
    // A seed that the reader refuses would leave the payload unfuzzed.
    for (path, bytes) in inputs(&fuzz_dir().join("corpus/bundle_reader")) {
        let header = airlock_formats::read_bundle(
            std::io::Cursor::new(&bytes),
            |_| Ok(()),
            Some(&mut airlock_formats::DiscardSink),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!header.manifest.files.is_empty());
    }
}
