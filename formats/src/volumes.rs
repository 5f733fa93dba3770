//! Volume sets (docs/FORMAT.md, "Volumes"): a bundle cut into numbered
//! files that fit removable media, an index, and optional Reed-Solomon
//! parity volumes that rebuild damaged or missing ones.
//!
//! The cut is chosen so that every volume can be checked against the signed
//! manifest: volume 1 is the bundle's header (marker, manifest, signatures,
//! the payload entry's tar header), which the signatures cover, and every
//! other volume is a run of whole payload chunks, whose SHA-256 digests the
//! manifest lists, plus, in the last ones, the container's end. The index
//! (`NAME.index`, JSON) lists each volume's size and SHA-256 so a bad one is
//! named at once; it is not trusted on its own: a reader checks the header
//! volume's manifest against it and every payload chunk against the
//! manifest before it uses a byte.
//!
//! Volumes are read in place, one after the other ([`VolumeSet::reader`]);
//! nothing here joins them, deletes or rewrites one.

// Every filesystem error here names its file: the contexts of
// `VolumeError::Io` and `BundleError::Io`, the volume rows of a check, and
// the volume reader's own message.
#![allow(clippy::disallowed_methods)]

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::bundle::{read_bundle, BundleHeader};
use crate::digest::{ParallelHashingReader, Sha256Digest};
use crate::durable::{sync_dir, write_atomic};
use crate::error::BundleError;
use crate::shown::shown;

/// The `format` of a volume index.
pub const INDEX_FORMAT: &str = "airlock-volumes/1";

/// The largest file FAT32 holds: 4 GiB - 1 byte (Microsoft, "FAT32 File
/// System Specification", file size field of 32 bits).
pub const FAT32_MAX_FILE: u64 = 4 * 1024 * 1024 * 1024 - 1;

/// The parity scheme: Reed-Solomon over GF(2^16) as `reed-solomon-simd` 3
/// computes it (Leopard-RS), the volumes as original shards.
pub const PARITY_SCHEME: &str = "reed-solomon-simd-3";

/// Parity is computed in slices of this many bytes of every volume at once,
/// so memory stays at this times the number of volumes.
const STRIPE: u64 = 1 << 20;

/// Parses a volume size: `fat32` (4 GiB - 1 byte), or a number of bytes
/// with an optional suffix `K`, `M` or `G` (powers of 1024; `KiB`, `MiB`,
/// `GiB` too), e.g. `700M`.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("fat32") {
        return Ok(FAT32_MAX_FILE);
    }
    let upper = t.to_ascii_uppercase();
    let number = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, factor) = match number.chars().last() {
        Some('K') => (&number[..number.len() - 1], 1u64 << 10),
        Some('M') => (&number[..number.len() - 1], 1 << 20),
        Some('G') => (&number[..number.len() - 1], 1 << 30),
        _ => (number, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            format!(
                "`{}` is not a volume size: give `fat32` or a number of bytes with K, M or G (powers of 1024), e.g. `700M`",
                shown(text)
            )
        })
}

/// One volume of a set, as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeEntry {
    /// Its file name, in the index's folder.
    pub file: String,
    /// Its size, in bytes.
    pub size: u64,
    /// SHA-256 of its contents.
    pub sha256: Sha256Digest,
}

/// The parity volumes of a set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parity {
    /// Always [`PARITY_SCHEME`].
    pub scheme: String,
    /// The size every volume is padded to with zero bytes for the code, and
    /// the size of each parity volume, in bytes; even.
    pub shard_size: u64,
    /// The parity volumes, in the code's recovery order.
    pub volumes: Vec<VolumeEntry>,
}

/// `NAME.index`: what a volume set holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeIndex {
    /// Always [`INDEX_FORMAT`].
    pub format: String,
    /// The file name of the bundle the volumes make up when joined.
    pub bundle: String,
    /// The bundle's size, in bytes: the sum of the volumes' sizes.
    pub size: u64,
    /// SHA-256 of the whole bundle, as `airlock-build build` printed it.
    pub sha256: Sha256Digest,
    /// SHA-256 of the bundle's `manifest.json`, the bytes its signatures cover.
    pub manifest_sha256: Sha256Digest,
    /// Where the payload begins in the bundle, in bytes: volume 1's size.
    pub payload_offset: u64,
    /// The manifest's `payload.chunk_size`, in bytes.
    pub chunk_size: u64,
    /// The volumes, in order; joined they are the bundle.
    pub volumes: Vec<VolumeEntry>,
    /// Parity volumes, if the set has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity: Option<Parity>,
}

fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && crate::shown::is_safe(name)
        && !name.contains('\0')
}

impl VolumeIndex {
    /// Parses and checks an index: its format, plain file names, volumes
    /// that add up to `size`, a first volume of `payload_offset` bytes, and
    /// parity volumes of `shard_size` bytes.
    ///
    /// # Errors
    /// A message naming the rule broken.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let index: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("the index is not valid: {e}"))?;
        if index.format != INDEX_FORMAT {
            return Err(format!(
                "index format `{}` is not supported: this version reads `{INDEX_FORMAT}`; use a newer airlock",
                shown(&index.format)
            ));
        }
        let names = index
            .volumes
            .iter()
            .chain(index.parity.iter().flat_map(|p| p.volumes.iter()));
        for v in names {
            if !plain_file_name(&v.file) {
                return Err(format!(
                    "volume name `{}` is not a plain file name",
                    shown(&v.file)
                ));
            }
        }
        if !plain_file_name(&index.bundle) {
            return Err(format!(
                "bundle name `{}` is not a plain file name",
                shown(&index.bundle)
            ));
        }
        let Some(first) = index.volumes.first() else {
            return Err("the index lists no volumes".into());
        };
        if first.size != index.payload_offset {
            return Err(format!(
                "volume 1 is {} bytes, but the payload begins at byte {}",
                first.size, index.payload_offset
            ));
        }
        let total = index
            .volumes
            .iter()
            .try_fold(0u64, |sum, v| sum.checked_add(v.size));
        if total != Some(index.size) {
            return Err(format!(
                "the volumes do not add up to the bundle's {} bytes",
                index.size
            ));
        }
        if let Some(parity) = &index.parity {
            if parity.scheme != PARITY_SCHEME {
                return Err(format!(
                    "parity scheme `{}` is not supported: this version reads `{PARITY_SCHEME}`",
                    shown(&parity.scheme)
                ));
            }
            let largest = index.volumes.iter().map(|v| v.size).max().unwrap_or(0);
            if parity.shard_size % 2 != 0 || parity.shard_size < largest {
                return Err(format!(
                    "parity shard size {} is odd or smaller than the largest volume",
                    parity.shard_size
                ));
            }
            if parity.volumes.is_empty()
                || parity.volumes.iter().any(|v| v.size != parity.shard_size)
                || !ReedSolomonEncoder::supports(index.volumes.len(), parity.volumes.len())
            {
                return Err(format!(
                    "{} parity volume(s) of {} bytes for {} volumes is not a code this version reads",
                    parity.volumes.len(),
                    parity.shard_size,
                    index.volumes.len()
                ));
            }
        }
        Ok(index)
    }

    /// The index as pretty JSON with a final newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// The volume holding byte `offset` of the bundle: its position from 0.
    pub fn volume_at(&self, offset: u64) -> usize {
        let mut end = 0u64;
        for (i, v) in self.volumes.iter().enumerate() {
            end = end.saturating_add(v.size);
            if offset < end {
                return i;
            }
        }
        self.volumes.len().saturating_sub(1)
    }

    /// How many parity volumes the set has.
    pub fn parity_count(&self) -> usize {
        self.parity.as_ref().map_or(0, |p| p.volumes.len())
    }
}

/// Where a bundle of `len` bytes is cut into volumes of at most
/// `volume_size` bytes: `(start, size)` of each. Volume 1 is the header
/// (`payload_offset` bytes); the others hold whole payload chunks of
/// `chunk_size` bytes, as many as fit.
///
/// # Errors
/// A message when `volume_size` is smaller than a chunk or than the header.
pub fn layout(
    len: u64,
    payload_offset: u64,
    chunk_size: u64,
    volume_size: u64,
) -> Result<Vec<(u64, u64)>, String> {
    if volume_size < chunk_size {
        return Err(format!(
            "a volume of {volume_size} bytes cannot hold one payload chunk of this bundle ({chunk_size} bytes); give at least that"
        ));
    }
    if payload_offset > volume_size {
        return Err(format!(
            "the bundle's header (manifest and signatures) is {payload_offset} bytes, more than a volume of {volume_size} bytes"
        ));
    }
    let per = volume_size / chunk_size * chunk_size;
    let mut cuts = vec![(0, payload_offset)];
    let mut start = payload_offset;
    while start < len {
        let size = per.min(len - start);
        cuts.push((start, size));
        start += size;
    }
    Ok(cuts)
}

/// Volume `n` (from 1) of `count`, for bundle file `bundle`: `BUNDLE.001`.
pub fn volume_name(bundle: &str, n: usize, count: usize) -> String {
    let width = count.to_string().len().max(3);
    format!("{bundle}.{n:0width$}")
}

/// Parity volume `n` (from 1) of `count`: `BUNDLE.p001`.
pub fn parity_name(bundle: &str, n: usize, count: usize) -> String {
    let width = count.to_string().len().max(3);
    format!("{bundle}.p{n:0width$}")
}

/// The index's file name for bundle file `bundle`.
pub fn index_name(bundle: &str) -> String {
    format!("{bundle}.index")
}

/// Errors of splitting and repairing.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The bundle could not be read.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// Reading or writing a file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The request or the set breaks a rule.
    #[error("{0}")]
    Invalid(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> VolumeError {
    let context = context.into();
    move |source| VolumeError::Io { context, source }
}

fn durable(e: crate::durable::DurableError) -> VolumeError {
    VolumeError::Io {
        context: format!("{} `{}`", e.action, e.path.display()),
        source: e.source,
    }
}

/// Writes `len` bytes from `from` to a new file `path` (beside it first,
/// fsynced, renamed), returning their SHA-256; `whole` hashes them too.
fn write_volume(
    path: &Path,
    from: &mut dyn Read,
    len: u64,
    mut whole: Option<&mut Sha256>,
) -> Result<Sha256Digest, VolumeError> {
    let mut hasher = Sha256::new();
    let mut copied = 0u64;
    write_atomic(path, 0o644, |f| {
        let mut buf = vec![0u8; 1 << 20];
        let mut limited = from.take(len);
        loop {
            let n = limited.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if let Some(w) = whole.as_deref_mut() {
                w.update(&buf[..n]);
            }
            f.write_all(&buf[..n])?;
            copied += n as u64;
        }
        Ok(())
    })
    .map_err(durable)?;
    if copied != len {
        return Err(VolumeError::Invalid(format!(
            "the bundle ended before volume `{}` was full",
            path.display()
        )));
    }
    Ok(Sha256Digest(hasher.finalize().into()))
}

/// Cuts the bundle file `bundle` into volumes of at most `volume_size`
/// bytes in the folder `out`, adds `ceil(volumes × parity_percent / 100)`
/// parity volumes when `parity_percent` is above 0, and writes the index
/// last. The bundle is read, never changed. Returns the index's path and
/// the index.
///
/// # Errors
/// [`VolumeError`] naming the file; the bundle's header must read.
pub fn split(
    bundle: &Path,
    out: &Path,
    volume_size: u64,
    parity_percent: u32,
) -> Result<(PathBuf, VolumeIndex), VolumeError> {
    let name = bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| plain_file_name(n))
        .ok_or_else(|| {
            VolumeError::Invalid(format!("`{}` has no usable file name", bundle.display()))
        })?;
    let opened = || File::open(bundle).map_err(io_err(format!("opening `{}`", bundle.display())));
    let len = opened()?
        .metadata()
        .map_err(io_err(format!("reading `{}`", bundle.display())))?
        .len();
    let header = read_bundle(BufReader::new(opened()?), |_| Ok(()), None)?;
    header.check_len(len)?;
    let cuts = layout(
        len,
        header.payload_offset,
        header.manifest.payload.chunk_size,
        volume_size,
    )
    .map_err(VolumeError::Invalid)?;
    std::fs::create_dir_all(out).map_err(io_err(format!("creating `{}`", out.display())))?;
    let mut reader = BufReader::with_capacity(1 << 20, opened()?);
    let mut whole = Sha256::new();
    let mut volumes = Vec::with_capacity(cuts.len());
    for (i, (_, size)) in cuts.iter().enumerate() {
        let file = volume_name(&name, i + 1, cuts.len());
        let sha256 = write_volume(&out.join(&file), &mut reader, *size, Some(&mut whole))?;
        volumes.push(VolumeEntry {
            file,
            size: *size,
            sha256,
        });
    }
    let mut index = VolumeIndex {
        format: INDEX_FORMAT.into(),
        bundle: name.clone(),
        size: len,
        sha256: Sha256Digest(whole.finalize().into()),
        manifest_sha256: Sha256Digest::of(&header.manifest_bytes),
        payload_offset: header.payload_offset,
        chunk_size: header.manifest.payload.chunk_size,
        volumes,
        parity: None,
    };
    if parity_percent > 0 {
        let count = (index.volumes.len() * parity_percent as usize).div_ceil(100);
        index.parity = Some(write_parity(&index, out, count.max(1))?);
    }
    let index_path = out.join(index_name(&name));
    write_atomic(&index_path, 0o644, |f| f.write_all(&index.to_json())).map_err(durable)?;
    sync_dir(out).map_err(durable)?;
    Ok((index_path, index))
}

/// Gives the written temporary file `tmp` mode 0644, fsyncs it and renames
/// it over `target` (the caller fsyncs the folder).
fn persist(tmp: tempfile::NamedTempFile, target: &Path) -> Result<(), VolumeError> {
    use std::os::unix::fs::PermissionsExt as _;
    let at = tmp.path().display().to_string();
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io_err(format!("setting the mode of `{at}`")))?;
    tmp.as_file()
        .sync_all()
        .map_err(io_err(format!("syncing `{at}`")))?;
    tmp.persist(target)
        .map_err(|e| io_err(format!("renaming over `{}`", target.display()))(e.error))?;
    Ok(())
}

/// Reads the next `len` bytes of each of `files` (zero bytes past a file's
/// end) into `bufs`.
fn read_stripe(files: &mut [Option<File>], bufs: &mut [Vec<u8>], len: usize) -> io::Result<()> {
    for (file, buf) in files.iter_mut().zip(bufs.iter_mut()) {
        buf.clear();
        buf.resize(len, 0);
        if let Some(f) = file {
            let mut filled = 0;
            while filled < len {
                let n = f.read(&mut buf[filled..])?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
        }
    }
    Ok(())
}

/// Computes `count` parity volumes over the data volumes of `index`, all
/// in the folder `dir`, and writes them there.
fn write_parity(index: &VolumeIndex, dir: &Path, count: usize) -> Result<Parity, VolumeError> {
    let n = index.volumes.len();
    if !ReedSolomonEncoder::supports(n, count) {
        return Err(VolumeError::Invalid(format!(
            "{count} parity volume(s) for {n} volumes is more than the code supports"
        )));
    }
    let largest = index.volumes.iter().map(|v| v.size).max().unwrap_or(0);
    let shard_size = largest.div_ceil(64).max(1) * 64;
    let mut inputs = Vec::with_capacity(n);
    for v in &index.volumes {
        let path = dir.join(&v.file);
        inputs.push(Some(
            File::open(&path).map_err(io_err(format!("opening `{}`", path.display())))?,
        ));
    }
    let names: Vec<String> = (1..=count)
        .map(|p| parity_name(&index.bundle, p, count))
        .collect();
    let mut outputs = Vec::with_capacity(count);
    for name in &names {
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .tempfile_in(dir)
            .map_err(io_err(format!("creating a file in `{}`", dir.display())))?;
        outputs.push((tmp, Sha256::new()));
    }
    let mut bufs = vec![Vec::new(); n];
    let mut encoder: Option<(usize, ReedSolomonEncoder)> = None;
    let mut at = 0u64;
    while at < shard_size {
        let len = usize::try_from(STRIPE.min(shard_size - at)).unwrap_or(usize::MAX);
        read_stripe(&mut inputs, &mut bufs, len).map_err(io_err(format!(
            "reading the volumes in `{}`",
            dir.display()
        )))?;
        let enc = match &mut encoder {
            Some((l, e)) if *l == len => e,
            _ => {
                let e = ReedSolomonEncoder::new(n, count, len)
                    .map_err(|e| VolumeError::Invalid(format!("parity: {e}")))?;
                &mut encoder.insert((len, e)).1
            }
        };
        for buf in &bufs {
            enc.add_original_shard(buf)
                .map_err(|e| VolumeError::Invalid(format!("parity: {e}")))?;
        }
        let result = enc
            .encode()
            .map_err(|e| VolumeError::Invalid(format!("parity: {e}")))?;
        for ((tmp, hasher), shard) in outputs.iter_mut().zip(result.recovery_iter()) {
            hasher.update(shard);
            tmp.as_file_mut()
                .write_all(shard)
                .map_err(io_err(format!("writing `{}`", tmp.path().display())))?;
        }
        at += len as u64;
    }
    let mut volumes = Vec::with_capacity(count);
    for ((tmp, hasher), name) in outputs.into_iter().zip(names) {
        persist(tmp, &dir.join(&name))?;
        volumes.push(VolumeEntry {
            file: name,
            size: shard_size,
            sha256: Sha256Digest(hasher.finalize().into()),
        });
    }
    sync_dir(dir).map_err(durable)?;
    Ok(Parity {
        scheme: PARITY_SCHEME.into(),
        shard_size,
        volumes,
    })
}

/// What a check found for one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum VolumeState {
    /// Its size and SHA-256 are the index's, and its bytes match the
    /// signed manifest.
    Ok,
    /// Present, but not what the index or the manifest says.
    Bad {
        /// What differs.
        reason: String,
    },
    /// Not there.
    Missing,
}

/// One volume's check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeCheck {
    /// Its file name.
    pub file: String,
    /// Whether it is a parity volume.
    pub parity: bool,
    /// What was found.
    #[serde(flatten)]
    pub state: VolumeState,
}

/// A volume set found on disk: its index and folder.
#[derive(Debug, Clone)]
pub struct VolumeSet {
    /// The folder holding the index and the volumes.
    pub dir: PathBuf,
    /// The index file.
    pub index_path: PathBuf,
    /// The index.
    pub index: VolumeIndex,
}

/// What [`VolumeSet::check`] found.
#[derive(Debug, Clone, Serialize)]
pub struct SetCheck {
    /// Every data volume, then every parity volume.
    pub volumes: Vec<VolumeCheck>,
    /// Data volumes that are bad or missing.
    pub damaged: usize,
    /// Parity volumes that are ok.
    pub parity_ok: usize,
    /// SHA-256 of the bundle the data volumes make up, when every one is ok.
    pub sha256: Option<Sha256Digest>,
}

impl SetCheck {
    /// Whether the bundle can be read as it is.
    pub fn usable(&self) -> bool {
        self.damaged == 0
    }

    /// Whether `airlock-apply repair` can rebuild what is damaged.
    pub fn repairable(&self) -> bool {
        self.damaged > 0 && self.damaged <= self.parity_ok
    }

    /// One sentence: how the set stands and what to do.
    pub fn verdict(&self, set: &VolumeSet) -> String {
        let bad: Vec<String> = self
            .volumes
            .iter()
            .filter(|v| !v.parity && v.state != VolumeState::Ok)
            .map(|v| match &v.state {
                VolumeState::Missing => format!("`{}` is missing", v.file),
                VolumeState::Bad { reason } => format!("`{}` {reason}", v.file),
                VolumeState::Ok => String::new(),
            })
            .collect();
        let parity = set.index.parity_count();
        if bad.is_empty() {
            return format!(
                "all {} volumes are ok; the set is usable",
                set.index.volumes.len()
            );
        }
        let what = bad.join("; ");
        if self.repairable() {
            format!(
                "{what}: {} damaged, and {} of the set's {parity} parity volume(s) are ok, so parity can rebuild them: run `airlock-apply repair {} --out NEW_FOLDER`",
                self.damaged,
                self.parity_ok,
                set.dir.display()
            )
        } else {
            format!(
                "{what}: {} damaged, and only {} of the set's {parity} parity volume(s) are ok, so parity cannot rebuild them; copy the damaged volumes again from the release medium",
                self.damaged, self.parity_ok
            )
        }
    }
}

/// The payload chunks a volume holds: the index of its first chunk, the
/// chunk size, the payload bytes from the volume's start to the payload's
/// end, and the manifest's chunk digests.
struct ChunkSpan<'a> {
    first: u64,
    size: u64,
    payload_left: u64,
    digests: &'a [Sha256Digest],
}

/// Hashes the file `path` (and feeds `whole`), and checks the payload
/// chunks `span` says it holds: returns its digest, its size and the first
/// chunk that does not match.
fn hash_volume(
    path: &Path,
    mut whole: Option<&mut Sha256>,
    span: Option<ChunkSpan<'_>>,
) -> io::Result<(Sha256Digest, u64, Option<u64>)> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut count = 0u64;
    let mut bad = None;
    let mut chunk = Sha256::new();
    let mut in_chunk = 0u64;
    let (mut index, size, mut left, digests) = match &span {
        Some(s) => (s.first, s.size.max(1), s.payload_left, s.digests),
        None => (0, 1, 0, &[][..]),
    };
    let finish = |chunk: Sha256, index: u64, bad: &mut Option<u64>| {
        let digest = Sha256Digest(chunk.finalize().into());
        let want = usize::try_from(index).ok().and_then(|i| digests.get(i));
        if want.is_some_and(|w| *w != digest) && bad.is_none() {
            *bad = Some(index);
        }
    };
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let data = &buf[..n];
        hasher.update(data);
        if let Some(w) = whole.as_deref_mut() {
            w.update(data);
        }
        count += n as u64;
        let mut rest = &data[..usize::try_from(left.min(n as u64)).unwrap_or(n)];
        left -= rest.len() as u64;
        while !rest.is_empty() {
            let take =
                usize::try_from((size - in_chunk).min(rest.len() as u64)).unwrap_or(rest.len());
            chunk.update(&rest[..take]);
            in_chunk += take as u64;
            rest = &rest[take..];
            if in_chunk == size {
                finish(std::mem::take(&mut chunk), index, &mut bad);
                index += 1;
                in_chunk = 0;
            }
        }
    }
    // The payload's last chunk, shorter than the others, ends in this volume.
    if span.is_some() && left == 0 && in_chunk > 0 {
        finish(chunk, index, &mut bad);
    }
    Ok((Sha256Digest(hasher.finalize().into()), count, bad))
}

impl VolumeSet {
    /// Whether `path` names a volume set: a folder, or a file whose name
    /// ends in `.index`.
    pub fn is_set(path: &Path) -> bool {
        path.is_dir()
            || path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".index"))
    }

    /// Opens the set of the index file `path`, or of the one index in the
    /// folder `path`.
    ///
    /// # Errors
    /// [`BundleError::Volumes`] when there is no index, or several, or it
    /// does not parse; [`BundleError::Io`] when it cannot be read.
    pub fn open(path: &Path) -> Result<Self, BundleError> {
        let index_path = if path.is_dir() {
            let mut found = Vec::new();
            let entries = std::fs::read_dir(path)
                .map_err(BundleError::io(format!("reading `{}`", path.display())))?;
            for entry in entries {
                let entry =
                    entry.map_err(BundleError::io(format!("reading `{}`", path.display())))?;
                if entry.file_name().to_string_lossy().ends_with(".index") {
                    found.push(entry.path());
                }
            }
            match found.len() {
                1 => found.remove(0),
                0 => {
                    return Err(BundleError::Volumes(format!(
                        "`{}` holds no volume index (`NAME.airlock.index`): give the bundle file, or the folder a volume set was copied to",
                        path.display()
                    )))
                }
                _ => {
                    return Err(BundleError::Volumes(format!(
                        "`{}` holds {} volume indexes: give the one to read",
                        path.display(),
                        found.len()
                    )))
                }
            }
        } else {
            path.to_owned()
        };
        let mut bytes = Vec::new();
        File::open(&index_path)
            .and_then(|f| f.take(1 << 24).read_to_end(&mut bytes))
            .map_err(BundleError::io(format!(
                "reading `{}`",
                index_path.display()
            )))?;
        let index = VolumeIndex::from_json(&bytes).map_err(|e| {
            BundleError::Volumes(format!("volume index `{}`: {e}", index_path.display()))
        })?;
        let dir = index_path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        Ok(Self {
            dir,
            index_path,
            index,
        })
    }

    /// The path of a volume.
    pub fn path_of(&self, entry: &VolumeEntry) -> PathBuf {
        self.dir.join(&entry.file)
    }

    /// Checks that every data volume is there with its size: the quick
    /// check before a read.
    ///
    /// # Errors
    /// [`BundleError::Volumes`] naming the missing or cut volumes and what
    /// parity can do, after a full [`VolumeSet::check`].
    pub fn check_present(&self) -> Result<(), BundleError> {
        let wrong = self
            .index
            .volumes
            .iter()
            .any(|v| std::fs::metadata(self.path_of(v)).map_or(true, |m| m.len() != v.size));
        if wrong {
            return Err(self.damage());
        }
        Ok(())
    }

    /// The error that says which volumes are damaged and what to do, from
    /// a full check.
    pub fn damage(&self) -> BundleError {
        let check = self.check();
        BundleError::Volumes(format!(
            "volume set `{}`: {}",
            self.index_path.display(),
            check.verdict(self)
        ))
    }

    /// A reader of the bundle the data volumes make up, one volume after
    /// the other, in place.
    ///
    /// # Errors
    /// [`BundleError::Volumes`] when a volume is missing or has another size.
    pub fn reader(&self) -> Result<VolumeReader, BundleError> {
        self.check_present()?;
        Ok(VolumeReader {
            files: self.index.volumes.iter().map(|v| self.path_of(v)).collect(),
            next: 0,
            current: None,
        })
    }

    /// Checks the header read from the set against the index: the
    /// manifest's SHA-256 and where the payload begins.
    ///
    /// # Errors
    /// [`BundleError::Volumes`] when volume 1 is not the one the index was
    /// made with.
    pub fn check_header(&self, header: &BundleHeader) -> Result<(), BundleError> {
        if Sha256Digest::of(&header.manifest_bytes) != self.index.manifest_sha256
            || header.payload_offset != self.index.payload_offset
        {
            // Volume 1 is damaged, or of another build than the index: say
            // which, and whether parity can rebuild it.
            return Err(self.damage());
        }
        header.check_len(self.index.size)
    }

    /// Checks every volume: data volumes against the index and, when
    /// volume 1 is ok, every payload chunk against the manifest it holds;
    /// parity volumes against the index.
    pub fn check(&self) -> SetCheck {
        let manifest = self
            .index
            .volumes
            .first()
            .and_then(|v| File::open(self.path_of(v)).ok())
            .and_then(|f| read_bundle(BufReader::new(f), |_| Ok(()), None).ok())
            .filter(|h| Sha256Digest::of(&h.manifest_bytes) == self.index.manifest_sha256);
        let mut whole = Sha256::new();
        let mut volumes = Vec::new();
        let mut offset = 0u64;
        let mut damaged = 0;
        for (i, v) in self.index.volumes.iter().enumerate() {
            let payload = match (&manifest, i) {
                (Some(h), 1..) => {
                    let p = &h.manifest.payload;
                    let into = offset.saturating_sub(h.payload_offset);
                    Some(ChunkSpan {
                        first: into / p.chunk_size.max(1),
                        size: p.chunk_size,
                        payload_left: p.size.saturating_sub(into),
                        digests: p.chunks.as_slice(),
                    })
                }
                _ => None,
            };
            let state = match hash_volume(&self.path_of(v), Some(&mut whole), payload) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => VolumeState::Missing,
                Err(e) => VolumeState::Bad {
                    reason: format!("cannot be read: {e}"),
                },
                Ok((_, size, _)) if size != v.size => VolumeState::Bad {
                    reason: format!("is {size} bytes, not {}", v.size),
                },
                Ok((sha, _, _)) if sha != v.sha256 => VolumeState::Bad {
                    reason: "does not match its SHA-256 in the index".into(),
                },
                Ok((_, _, Some(chunk))) => VolumeState::Bad {
                    reason: format!(
                        "holds payload chunk {chunk}, which does not match the signed manifest"
                    ),
                },
                Ok(_) if i == 0 && manifest.is_none() => VolumeState::Bad {
                    reason: "does not hold the manifest the index lists".into(),
                },
                Ok(_) => VolumeState::Ok,
            };
            if state != VolumeState::Ok {
                damaged += 1;
            }
            offset = offset.saturating_add(v.size);
            volumes.push(VolumeCheck {
                file: v.file.clone(),
                parity: false,
                state,
            });
        }
        let mut parity_ok = 0;
        for v in self.index.parity.iter().flat_map(|p| p.volumes.iter()) {
            let state = match hash_volume(&self.path_of(v), None, None) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => VolumeState::Missing,
                Err(e) => VolumeState::Bad {
                    reason: format!("cannot be read: {e}"),
                },
                Ok((sha, size, _)) if size != v.size || sha != v.sha256 => VolumeState::Bad {
                    reason: "does not match its size and SHA-256 in the index".into(),
                },
                Ok(_) => VolumeState::Ok,
            };
            if state == VolumeState::Ok {
                parity_ok += 1;
            }
            volumes.push(VolumeCheck {
                file: v.file.clone(),
                parity: true,
                state,
            });
        }
        let sha256 = (damaged == 0).then(|| Sha256Digest(whole.finalize().into()));
        SetCheck {
            volumes,
            damaged,
            parity_ok,
            sha256,
        }
    }

    /// Rebuilds the damaged and missing volumes from parity into the new
    /// folder `out`, with a copy of every good volume and the index, so
    /// `out` holds a complete set. Nothing in the set's own folder is
    /// written. Returns the files rebuilt.
    ///
    /// # Errors
    /// [`VolumeError::Invalid`] when nothing is damaged, when more is
    /// damaged than parity can rebuild, when `out` is the set's folder, or
    /// when a rebuilt volume does not match the index (the parity volumes
    /// were not made from these volumes); [`VolumeError::Io`] naming the
    /// file.
    pub fn repair(&self, out: &Path) -> Result<Vec<String>, VolumeError> {
        let check = self.check();
        if check.usable() {
            return Err(VolumeError::Invalid(format!(
                "every volume of `{}` is ok: nothing to repair",
                self.index_path.display()
            )));
        }
        if !check.repairable() {
            return Err(VolumeError::Invalid(check.verdict(self)));
        }
        std::fs::create_dir_all(out).map_err(io_err(format!("creating `{}`", out.display())))?;
        let same = |a: &Path, b: &Path| {
            use std::os::unix::fs::MetadataExt as _;
            match (std::fs::metadata(a), std::fs::metadata(b)) {
                (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
                _ => false,
            }
        };
        if same(out, &self.dir) {
            return Err(VolumeError::Invalid(format!(
                "`{}` is the set's own folder: repair writes a new set into another folder and never touches the originals",
                out.display()
            )));
        }
        let Some(parity) = &self.index.parity else {
            return Err(VolumeError::Invalid("the set has no parity volumes".into()));
        };
        let n = self.index.volumes.len();
        let p = parity.volumes.len();
        let state_of = |file: &str| {
            check
                .volumes
                .iter()
                .find(|c| c.file == file)
                .map(|c| &c.state)
        };
        let bad: Vec<usize> = (0..n)
            .filter(|&i| state_of(&self.index.volumes[i].file) != Some(&VolumeState::Ok))
            .collect();
        let good_parity: Vec<usize> = (0..p)
            .filter(|&j| state_of(&parity.volumes[j].file) == Some(&VolumeState::Ok))
            .take(bad.len())
            .collect();
        let open = |e: &VolumeEntry| {
            let path = self.path_of(e);
            File::open(&path).map_err(io_err(format!("opening `{}`", path.display())))
        };
        let mut originals: Vec<Option<File>> = Vec::with_capacity(n);
        for (i, v) in self.index.volumes.iter().enumerate() {
            originals.push(if bad.contains(&i) {
                None
            } else {
                Some(open(v)?)
            });
        }
        let mut recovery: Vec<Option<File>> = Vec::with_capacity(good_parity.len());
        for &j in &good_parity {
            recovery.push(Some(open(&parity.volumes[j])?));
        }
        let mut outputs = Vec::with_capacity(bad.len());
        for &i in &bad {
            let tmp = tempfile::Builder::new()
                .prefix(&format!(".{}.", self.index.volumes[i].file))
                .tempfile_in(out)
                .map_err(io_err(format!("creating a file in `{}`", out.display())))?;
            outputs.push((i, tmp, Sha256::new(), 0u64));
        }
        let mut obufs = vec![Vec::new(); n];
        let mut rbufs = vec![Vec::new(); recovery.len()];
        let mut at = 0u64;
        while at < parity.shard_size {
            let len = usize::try_from(STRIPE.min(parity.shard_size - at)).unwrap_or(usize::MAX);
            read_stripe(&mut originals, &mut obufs, len).map_err(io_err(format!(
                "reading the volumes in `{}`",
                self.dir.display()
            )))?;
            read_stripe(&mut recovery, &mut rbufs, len).map_err(io_err(format!(
                "reading the parity volumes in `{}`",
                self.dir.display()
            )))?;
            let mut decoder = ReedSolomonDecoder::new(n, p, len)
                .map_err(|e| VolumeError::Invalid(format!("parity: {e}")))?;
            for (i, buf) in obufs.iter().enumerate() {
                if !bad.contains(&i) {
                    decoder
                        .add_original_shard(i, buf)
                        .map_err(|e| VolumeError::Invalid(format!("parity: {e}")))?;
                }
            }
            for (k, &j) in good_parity.iter().enumerate() {
                decoder
                    .add_recovery_shard(j, &rbufs[k])
                    .map_err(|e| VolumeError::Invalid(format!("parity: {e}")))?;
            }
            let result = decoder
                .decode()
                .map_err(|e| VolumeError::Invalid(format!("parity: {e}")))?;
            for (i, tmp, hasher, written) in &mut outputs {
                let restored = result.restored_original(*i).ok_or_else(|| {
                    VolumeError::Invalid(format!("parity did not rebuild volume {}", *i + 1))
                })?;
                let want = self.index.volumes[*i].size;
                let keep =
                    usize::try_from(want.saturating_sub(*written).min(len as u64)).unwrap_or(0);
                hasher.update(&restored[..keep]);
                tmp.as_file_mut()
                    .write_all(&restored[..keep])
                    .map_err(io_err(format!("writing `{}`", tmp.path().display())))?;
                *written += keep as u64;
            }
            at += len as u64;
        }
        let mut rebuilt = Vec::new();
        for (i, tmp, hasher, _) in outputs {
            let entry = &self.index.volumes[i];
            if Sha256Digest(hasher.finalize().into()) != entry.sha256 {
                return Err(VolumeError::Invalid(format!(
                    "volume `{}` rebuilt from parity does not match its SHA-256 in the index: the parity volumes were not made from these volumes; copy the set again",
                    entry.file
                )));
            }
            persist(tmp, &out.join(&entry.file))?;
            rebuilt.push(entry.file.clone());
        }
        for (i, v) in self.index.volumes.iter().enumerate() {
            if !bad.contains(&i) {
                write_volume(&out.join(&v.file), &mut open(v)?, v.size, None)?;
            }
        }
        // Fresh parity over the repaired set, so it can be repaired again.
        let fresh = write_parity(&self.index, out, p)?;
        if fresh != *parity {
            return Err(VolumeError::Invalid(
                "the parity computed over the repaired volumes differs from the index's".into(),
            ));
        }
        let index_path = out.join(
            self.index_path
                .file_name()
                .map_or_else(|| index_name(&self.index.bundle).into(), ToOwned::to_owned),
        );
        write_atomic(&index_path, 0o644, |f| f.write_all(&self.index.to_json()))
            .map_err(durable)?;
        sync_dir(out).map_err(durable)?;
        Ok(rebuilt)
    }
}

impl VolumeSet {
    /// Writes the bundle the data volumes make up to the new file `out`
    /// (beside it first, fsynced, renamed), checking its SHA-256 against
    /// the index's before the rename. The volumes are only read.
    ///
    /// # Errors
    /// [`VolumeError::Bundle`] when a volume is missing;
    /// [`VolumeError::Invalid`] when the joined bytes differ from the index
    /// (a damaged volume: see [`VolumeSet::check`]) or `out` exists;
    /// [`VolumeError::Io`] naming the file.
    pub fn join(&self, out: &Path) -> Result<(), VolumeError> {
        if out.exists() {
            return Err(VolumeError::Invalid(format!(
                "`{}` exists; join writes a new file",
                out.display()
            )));
        }
        let mut reader = self.reader()?;
        let mut hasher = Sha256::new();
        let mut matches = false;
        write_atomic(out, 0o644, |f| {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                f.write_all(&buf[..n])?;
            }
            matches =
                Sha256Digest(std::mem::take(&mut hasher).finalize().into()) == self.index.sha256;
            if matches {
                Ok(())
            } else {
                Err(io::Error::other("the joined volumes differ from the index"))
            }
        })
        .map_err(|e| {
            if matches {
                durable(e)
            } else {
                VolumeError::Invalid(format!(
                    "the volumes of `{}` joined do not match the bundle's SHA-256 in the index: {}",
                    self.index_path.display(),
                    self.check().verdict(self)
                ))
            }
        })
    }
}

/// Reads the data volumes of a set one after the other.
#[derive(Debug)]
pub struct VolumeReader {
    files: Vec<PathBuf>,
    next: usize,
    current: Option<File>,
}

impl Read for VolumeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(f) = &mut self.current {
                let n = f.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.current = None;
            }
            let Some(path) = self.files.get(self.next) else {
                return Ok(0);
            };
            self.current = Some(File::open(path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("opening volume `{}`: {e}", path.display()),
                )
            })?);
            self.next += 1;
        }
    }
}

/// A bundle given on the command line: one file, or a volume set.
#[derive(Debug, Clone)]
pub enum BundleSource {
    /// A bundle file.
    File {
        /// Its path.
        path: PathBuf,
        /// Its size, in bytes.
        len: u64,
    },
    /// A volume set.
    Volumes(Box<VolumeSet>),
}

impl BundleSource {
    /// Opens `path`: a folder or a `*.index` file is a volume set, anything
    /// else a bundle file.
    ///
    /// # Errors
    /// [`BundleError::Io`] when it cannot be read, [`BundleError::Volumes`]
    /// for a bad index.
    pub fn open(path: &Path) -> Result<Self, BundleError> {
        if VolumeSet::is_set(path) {
            return Ok(Self::Volumes(Box::new(VolumeSet::open(path)?)));
        }
        let len = std::fs::metadata(path)
            .map_err(BundleError::io(format!("opening `{}`", path.display())))?
            .len();
        Ok(Self::File {
            path: path.to_owned(),
            len,
        })
    }

    /// The bundle's size, in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Self::File { len, .. } => *len,
            Self::Volumes(set) => set.index.size,
        }
    }

    /// Whether the bundle is empty (0 bytes).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader of the whole bundle.
    ///
    /// # Errors
    /// [`BundleError::Io`] when the file cannot be opened;
    /// [`BundleError::Volumes`] when a volume is missing or cut.
    pub fn reader(&self) -> Result<Box<dyn Read + Send>, BundleError> {
        match self {
            Self::File { path, .. } => Ok(Box::new(
                File::open(path)
                    .map_err(BundleError::io(format!("opening `{}`", path.display())))?,
            )),
            Self::Volumes(set) => Ok(Box::new(set.reader()?)),
        }
    }

    /// Checks a header read from this source: the bundle is as long as the
    /// header declares, and a set's volume 1 is the index's.
    ///
    /// # Errors
    /// [`BundleError::Incomplete`] or [`BundleError::Volumes`].
    pub fn check_header(&self, header: &BundleHeader) -> Result<(), BundleError> {
        match self {
            Self::File { len, .. } => header.check_len(*len),
            Self::Volumes(set) => set.check_header(header),
        }
    }

    /// Turns an error met while reading a set into one that names the bad
    /// volumes (after a full check) when the set is damaged; other errors,
    /// and every error of a single file, are returned as they are.
    pub fn explain(&self, error: BundleError) -> BundleError {
        match (self, &error) {
            // A signature that does not verify is damage only if volume 1,
            // which holds them, is not the index's; a key the site does not
            // trust is not damage, and needs no look at every volume.
            (Self::Volumes(set), BundleError::Signature(_)) => {
                let first = set.index.volumes.first();
                let intact = first.is_some_and(|v| {
                    hash_volume(&set.path_of(v), None, None)
                        .is_ok_and(|(sha, size, _)| sha == v.sha256 && size == v.size)
                });
                if intact {
                    error
                } else {
                    set.damage()
                }
            }
            (
                Self::Volumes(set),
                BundleError::ChunkMismatch { .. }
                | BundleError::Malformed(_)
                | BundleError::Container(_)
                | BundleError::Entry { .. }
                | BundleError::Manifest(_)
                | BundleError::Path(_),
            ) => {
                let check = set.check();
                if check.usable() {
                    error
                } else {
                    BundleError::Volumes(format!(
                        "{error}; volume set `{}`: {}",
                        set.index_path.display(),
                        check.verdict(set)
                    ))
                }
            }
            _ => error,
        }
    }

    /// Reads the bundle as [`read_bundle`] does, checking the header against
    /// the source ([`BundleSource::check_header`]) before `check`, and
    /// naming damaged volumes in the error ([`BundleSource::explain`]).
    ///
    /// # Errors
    /// As [`read_bundle`].
    pub fn read(
        &self,
        check: impl FnOnce(&BundleHeader) -> Result<(), BundleError>,
        sink: Option<&mut dyn crate::bundle::PayloadSink>,
    ) -> Result<BundleHeader, BundleError> {
        self.read_from(
            BufReader::with_capacity(1 << 20, self.reader()?),
            check,
            sink,
        )
    }

    /// As [`BundleSource::read`], and hashes what it reads in the same
    /// pass: with a `sink`, every byte of the bundle to its end, so the
    /// digest is the bundle's SHA-256 (as `airlock-build build` printed
    /// it); without one, the header only.
    ///
    /// # Errors
    /// As [`read_bundle`]; [`BundleError::Io`] when the end cannot be read.
    pub fn read_hashed(
        &self,
        check: impl FnOnce(&BundleHeader) -> Result<(), BundleError>,
        sink: Option<&mut dyn crate::bundle::PayloadSink>,
    ) -> Result<(BundleHeader, Sha256Digest), BundleError> {
        let whole = sink.is_some();
        // The bundle's SHA-256 is taken on a thread beside the read.
        let mut hashing =
            ParallelHashingReader::new(BufReader::with_capacity(1 << 20, self.reader()?));
        let header = self.read_from(&mut hashing, check, sink)?;
        if whole {
            // Whatever padding follows the container counts too.
            io::copy(&mut hashing, &mut io::sink())
                .map_err(BundleError::io("reading the end of the bundle"))?;
        }
        let (digest, _) = hashing
            .finish()
            .map_err(BundleError::io("hashing the bundle"))?;
        Ok((header, digest))
    }

    fn read_from(
        &self,
        reader: impl Read,
        check: impl FnOnce(&BundleHeader) -> Result<(), BundleError>,
        sink: Option<&mut dyn crate::bundle::PayloadSink>,
    ) -> Result<BundleHeader, BundleError> {
        read_bundle(
            reader,
            |h| {
                self.check_header(h)?;
                check(h)
            },
            sink,
        )
        .map_err(|e| self.explain(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat32_is_four_gib_less_one_byte() {
        assert_eq!(parse_size("fat32"), Ok(4_294_967_295));
        assert_eq!(parse_size("FAT32"), Ok(FAT32_MAX_FILE));
        assert_eq!(parse_size("700M"), Ok(700 * 1024 * 1024));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("12345"), Ok(12_345));
        for bad in ["", "0", "M", "1.5G", "-1", "10T", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fat32_volumes_hold_whole_chunks_and_never_reach_four_gib() {
        let chunk = 4 << 20;
        let len = 10 * (1u64 << 30) + 12_345;
        let cuts = layout(len, 3_072, chunk, FAT32_MAX_FILE).expect("layout");
        assert_eq!(cuts[0], (0, 3_072));
        for (start, size) in &cuts[1..] {
            assert!(*size <= FAT32_MAX_FILE);
            assert_eq!((start - 3_072) % chunk, 0, "a volume starts mid-chunk");
        }
        assert_eq!(cuts[1].1, 1023 * chunk);
        let end = cuts.last().map(|(s, l)| s + l);
        assert_eq!(end, Some(len));
    }

    #[test]
    fn a_volume_smaller_than_a_chunk_or_the_header_is_refused() {
        assert!(layout(100 << 20, 3_072, 4 << 20, 1 << 20).is_err());
        assert!(layout(100 << 20, 8 << 20, 4 << 20, 4 << 20).is_err());
    }

    /// Bytes no compressor shrinks (xorshift64).
    fn noise(len: usize, mut state: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(&state.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn read_all(source: &BundleSource) -> Result<BundleHeader, BundleError> {
        source.read(|_| Ok(()), Some(&mut crate::DiscardSink))
    }

    #[test]
    fn a_split_bundle_reads_in_place_names_a_bad_volume_and_parity_repairs_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = noise(300_000, 1);
        let b = noise(250_000, 2);
        let (bytes, _key) =
            crate::bundle::tests::build(&[("hooks/a.bin", &a[..]), ("hooks/b.bin", &b[..])]);
        let bundle = dir.path().join("x-1.0.0.airlock");
        std::fs::write(&bundle, &bytes).expect("write");
        let set_dir = dir.path().join("set");
        // 64 KiB chunks, two per volume; 50 % parity.
        let (index_path, index) = split(&bundle, &set_dir, 150_000, 50).expect("split");
        assert!(index.volumes.len() >= 5, "{} volumes", index.volumes.len());
        assert_eq!(index.sha256, Sha256Digest::of(&bytes));
        assert_eq!(index.parity_count(), index.volumes.len().div_ceil(2));
        assert!(index.volumes.iter().all(|v| v.size <= 150_000));
        let source = BundleSource::open(&set_dir).expect("open");
        assert_eq!(source.len(), bytes.len() as u64);
        read_all(&source).expect("the set reads");
        let BundleSource::Volumes(set) = &source else {
            panic!("not a set")
        };
        assert_eq!(set.check().sha256, Some(index.sha256));

        // A flipped byte in volume 3 is named, and parity rebuilds it.
        let third = set_dir.join(&index.volumes[2].file);
        let mut damaged = std::fs::read(&third).expect("read");
        damaged[1000] ^= 0x55;
        std::fs::write(&third, &damaged).expect("write");
        let err = read_all(&source).expect_err("refused").to_string();
        assert!(err.contains(&index.volumes[2].file), "{err}");
        assert!(err.contains("airlock-apply repair"), "{err}");
        let fixed = dir.path().join("fixed");
        let rebuilt = set.repair(&fixed).expect("repair");
        assert_eq!(rebuilt, vec![index.volumes[2].file.clone()]);
        assert_eq!(
            std::fs::read(&third).expect("read"),
            damaged,
            "the original was touched"
        );
        read_all(
            &BundleSource::open(&fixed.join(index_path.file_name().expect("name"))).expect("open"),
        )
        .expect("the repaired set reads");

        // More missing than parity can rebuild: refused, saying so.
        for v in &index.volumes[..=index.parity_count()] {
            let _ = std::fs::remove_file(set_dir.join(&v.file));
        }
        let err = read_all(&source).expect_err("refused").to_string();
        assert!(
            err.contains("is missing") && err.contains("cannot rebuild"),
            "{err}"
        );
        let err = set
            .repair(&dir.path().join("again"))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("cannot rebuild"), "{err}");
    }

    #[test]
    fn a_short_copy_is_named_incomplete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, _key) = crate::bundle::tests::build(&[("hooks/a.bin", &noise(100_000, 3)[..])]);
        let short = dir.path().join("short.airlock");
        std::fs::write(&short, &bytes[..bytes.len() - 600]).expect("write");
        let source = BundleSource::open(&short).expect("open");
        let err = source.read(|_| Ok(()), None).expect_err("refused");
        assert!(
            matches!(err, BundleError::Incomplete { have, need } if need - have >= 600 - 512),
            "{err}"
        );
    }

    #[test]
    fn an_index_with_a_path_for_a_name_is_refused() {
        let index = VolumeIndex {
            format: INDEX_FORMAT.into(),
            bundle: "b.airlock".into(),
            size: 10,
            sha256: Sha256Digest::of(b""),
            manifest_sha256: Sha256Digest::of(b""),
            payload_offset: 4,
            chunk_size: 65_536,
            volumes: vec![
                VolumeEntry {
                    file: "b.airlock.001".into(),
                    size: 4,
                    sha256: Sha256Digest::of(b""),
                },
                VolumeEntry {
                    file: "../../etc/passwd".into(),
                    size: 6,
                    sha256: Sha256Digest::of(b""),
                },
            ],
            parity: None,
        };
        let err = VolumeIndex::from_json(&index.to_json()).expect_err("refused");
        assert!(err.contains("not a plain file name"), "{err}");
        let mut sizes = index.clone();
        sizes.volumes[1].file = "b.airlock.002".into();
        sizes.size = 11;
        let err = VolumeIndex::from_json(&sizes.to_json()).expect_err("refused");
        assert!(err.contains("do not add up"), "{err}");
        sizes.size = 10;
        assert!(VolumeIndex::from_json(&sizes.to_json()).is_ok());
    }
}
