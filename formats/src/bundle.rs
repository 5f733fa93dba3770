//! The bundle file (docs/FORMAT.md, "Container"): a tar whose entries are, in
//! this order, `airlock-format`, `manifest.json`, an optional
//! `trust-update.json`, zero or more `signature-KEYID.minisig`, and
//! `payload.tar.zst`, and nothing after.
//! Read in one streaming pass; the caller authenticates the manifest before a
//! single payload byte is read.

use std::collections::HashMap;
use std::io::{self, Read, Write};

use crate::digest::FileHashing;
use crate::error::BundleError;
use crate::manifest::{FileEntry, Manifest, FORMAT_MARKER};
use crate::path::BundlePath;
use crate::payload::{unwrap_io, ChunkVerifier};
use crate::shown::shown;
use crate::signing::Signature;

/// Name of the first entry, holding the format marker and a newline.
pub const FORMAT_ENTRY: &str = "airlock-format";
/// Name of the manifest entry.
pub const MANIFEST_ENTRY: &str = "manifest.json";
/// Name of the payload entry.
pub const PAYLOAD_ENTRY: &str = "payload.tar.zst";
/// Name of the optional entry carrying a signed trust update
/// (docs/FORMAT.md, "Trust updates").
pub const TRUST_UPDATE_ENTRY: &str = "trust-update.json";
/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_SIZE: u64 = 16 * 1024 * 1024;
/// Largest signature file accepted, in bytes.
pub const MAX_SIGNATURE_SIZE: u64 = 4096;
/// Most signatures accepted on one bundle.
pub const MAX_SIGNATURES: usize = 64;
/// Size of a tar block: headers and padded entry data (POSIX.1-2017, pax,
/// "ustar Interchange Format").
const BLOCK_SIZE: usize = 512;
/// Most zero padding accepted after the container's end-of-archive block, in bytes.
const MAX_TRAILING_ZEROS: u64 = 20 * 512;

/// Why [`ContainerGuard`] stopped: a container header the tar crate must not see.
#[derive(Debug)]
struct ContainerRefusal(String);

impl std::fmt::Display for ContainerRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ContainerRefusal {}

/// The reader under the container's tar reader. It reads the container one
/// 512-byte header at a time, ahead of the tar crate, and refuses every
/// header that is not a regular file before the tar crate acts on it: a GNU
/// long name or PAX record would otherwise be read into memory whole, at any
/// size, before any signature is checked. After the end-of-archive block it
/// passes bytes through unread.
struct ContainerGuard<R> {
    inner: R,
    /// Data bytes of the current entry (padded to 512) still to pass through.
    data_left: u64,
    /// A checked header block being passed on, and how much of it was.
    block: [u8; 512],
    block_len: usize,
    block_pos: usize,
    /// The end-of-archive block went by.
    ended: bool,
}

impl<R: Read> ContainerGuard<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            data_left: 0,
            block: [0; 512],
            block_len: 0,
            block_pos: 0,
            ended: false,
        }
    }

    /// Reads the next header block (all of it, unless the file ends) and checks it.
    fn next_header(&mut self) -> io::Result<()> {
        let mut filled = 0;
        while filled < 512 {
            match self.inner.read(&mut self.block[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.block_len = filled;
        self.block_pos = 0;
        if filled < 512 || self.block.iter().all(|b| *b == 0) {
            // A short block is for the tar crate to call truncated; a zero
            // block ends the archive.
            self.ended = filled == 512;
            return Ok(());
        }
        let header = tar::Header::from_byte_slice(&self.block);
        let kind = header.entry_type();
        let size = header.entry_size().unwrap_or(u64::MAX);
        if !matches!(kind, tar::EntryType::Regular) {
            let what = match kind {
                tar::EntryType::GNULongName => "a GNU long-name record",
                tar::EntryType::GNULongLink => "a GNU long-link record",
                tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => "a PAX header record",
                tar::EntryType::Directory => "a directory",
                tar::EntryType::Symlink | tar::EntryType::Link => "a link",
                _ => "not a regular file",
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                ContainerRefusal(format!(
                    "container entry `{}` is {what} of {size} bytes; an airlock bundle's container holds regular files only (refused before reading it)",
                    crate::shown::shown_bytes(&header.path_bytes())
                )),
            ));
        }
        self.data_left = size.saturating_add(511) / 512 * 512;
        Ok(())
    }
}

impl<R: Read> Read for ContainerGuard<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.block_pos == self.block_len && self.data_left == 0 && !self.ended {
            self.next_header()?;
        }
        if self.block_pos < self.block_len {
            let n = out.len().min(self.block_len - self.block_pos);
            out[..n].copy_from_slice(&self.block[self.block_pos..self.block_pos + n]);
            self.block_pos += n;
            return Ok(n);
        }
        if self.ended {
            return self.inner.read(out);
        }
        let want = usize::try_from(self.data_left)
            .unwrap_or(usize::MAX)
            .min(out.len());
        let n = self.inner.read(&mut out[..want])?;
        self.data_left -= n as u64;
        Ok(n)
    }
}

/// The [`BundleError`] for an error of the container's tar reader: the
/// guard's refusal as it is, else `context` and the error.
fn container_error(context: String, e: io::Error) -> BundleError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<ContainerRefusal>())
    {
        Some(refusal) => BundleError::Container(refusal.0.clone()),
        None => BundleError::Malformed(format!("{context}: {e}")),
    }
}

/// Name of the entry holding the signature by `key_id`.
pub fn signature_entry_name(sig: &Signature) -> String {
    format!("signature-{}.minisig", sig.key_id())
}

/// What precedes the payload: the manifest, its exact bytes and the signatures.
#[derive(Debug, Clone)]
pub struct BundleHeader {
    /// The parsed, validated manifest.
    pub manifest: Manifest,
    /// The bytes the signatures cover.
    pub manifest_bytes: Vec<u8>,
    /// Signatures in file order.
    pub signatures: Vec<Signature>,
    /// The bytes of the trust update the bundle carries, parsed once
    /// ([`crate::TrustUpdate::from_json`]) but not checked against any trust.
    pub trust_update: Option<Vec<u8>>,
    /// Where the payload's bytes begin in the container, in bytes from the
    /// start of the file: everything before is the header (marker, manifest,
    /// signatures and the payload entry's tar header).
    pub payload_offset: u64,
}

impl BundleHeader {
    /// The smallest size of a complete bundle with this header, in bytes:
    /// the header, the payload padded to 512-byte blocks, and the two zero
    /// blocks that end a tar (POSIX.1-2017, pax, "ustar Interchange Format").
    pub fn complete_len(&self) -> u64 {
        let payload = self.manifest.payload.size;
        self.payload_offset
            .saturating_add(payload.div_ceil(512).saturating_mul(512))
            .saturating_add(1024)
    }

    /// Checks that a bundle of `len` bytes can hold what this header
    /// declares.
    ///
    /// # Errors
    /// [`BundleError::Incomplete`] when it is shorter.
    pub fn check_len(&self, len: u64) -> Result<(), BundleError> {
        let need = self.complete_len();
        if len < need {
            return Err(BundleError::Incomplete { have: len, need });
        }
        Ok(())
    }
}

/// Receives payload files while the bundle is read.
pub trait PayloadSink {
    /// Receives the contents of `entry`, exactly `entry.size` bytes. They are
    /// not verified yet: keep them where nothing uses them until [`PayloadSink::verified`].
    ///
    /// # Errors
    /// Anything that stops the read.
    fn write_file(&mut self, entry: &FileEntry, contents: &mut dyn Read)
        -> Result<(), BundleError>;

    /// Called once the contents just written matched the manifest's size and SHA-256.
    ///
    /// # Errors
    /// Anything that stops the read.
    fn verified(&mut self, entry: &FileEntry) -> Result<(), BundleError>;
}

/// A sink that reads and discards every file, for `verify`.
pub struct DiscardSink;

impl PayloadSink for DiscardSink {
    fn write_file(
        &mut self,
        entry: &FileEntry,
        contents: &mut dyn Read,
    ) -> Result<(), BundleError> {
        // Reads of 1 MiB: the zstd decoder and the hashing behind
        // `contents` do less per byte with large reads than with io::copy's
        // 8 KiB.
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match contents.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(unwrap_io(
                        &format!("reading payload entry `{}`", entry.path),
                        e,
                    ))
                }
            }
        }
    }

    fn verified(&mut self, _entry: &FileEntry) -> Result<(), BundleError> {
        Ok(())
    }
}

/// Writes a bundle file into `out`: marker, manifest bytes, signatures
/// (sorted by key id), then `payload_size` bytes from `payload`. Every entry
/// carries mode 0644, owner 0 and time `mtime`, so the output is reproducible.
///
/// # Errors
/// [`BundleError::Io`] on read or write errors; [`BundleError::Malformed`]
/// when `payload` does not hold `payload_size` bytes.
pub fn write_bundle<W: Write>(
    out: W,
    manifest_bytes: &[u8],
    signatures: &[Signature],
    payload: impl Read,
    payload_size: u64,
    mtime: u64,
) -> Result<W, BundleError> {
    write_bundle_carrying(
        out,
        manifest_bytes,
        None,
        signatures,
        payload,
        payload_size,
        mtime,
    )
}

/// [`write_bundle`] with the entry `trust-update.json` holding
/// `trust_update` after the manifest, when given.
///
/// # Errors
/// As [`write_bundle`].
pub fn write_bundle_carrying<W: Write>(
    mut out: W,
    manifest_bytes: &[u8],
    trust_update: Option<&[u8]>,
    signatures: &[Signature],
    payload: impl Read,
    payload_size: u64,
    mtime: u64,
) -> Result<W, BundleError> {
    let head = bundle_head(
        manifest_bytes,
        trust_update,
        signatures,
        payload_size,
        mtime,
    )?;
    out.write_all(&head)
        .map_err(BundleError::io("writing the bundle's entries"))?;
    let copied = std::io::copy(&mut payload.take(payload_size), &mut out).map_err(
        BundleError::io(format!("writing bundle entry `{PAYLOAD_ENTRY}`")),
    )?;
    if copied != payload_size {
        return Err(BundleError::Malformed(format!(
            "the payload source holds fewer than {payload_size} bytes"
        )));
    }
    out.write_all(&bundle_tail(payload_size))
        .map_err(BundleError::io("ending the bundle"))?;
    Ok(out)
}

/// The bytes of a bundle before its payload's data: the format marker, the
/// manifest, the trust update when given, the signatures (sorted by key id)
/// and the payload entry's tar header, each entry with mode 0644, owner 0
/// and time `mtime` (docs/FORMAT.md, "Container"). A writer that copies the
/// payload by other means (`copy_file_range`) writes these bytes, then
/// exactly `payload_size` payload bytes, then [`bundle_tail`].
///
/// # Errors
/// [`BundleError::Io`] when an entry name does not fit a tar header (never
/// for the names airlock writes).
pub fn bundle_head(
    manifest_bytes: &[u8],
    trust_update: Option<&[u8]>,
    signatures: &[Signature],
    payload_size: u64,
    mtime: u64,
) -> Result<Vec<u8>, BundleError> {
    let mut head = Vec::with_capacity(manifest_bytes.len() + 8 * BLOCK_SIZE);
    let mut entry = |name: &str, data: Option<&[u8]>, size: u64| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_uid(0);
        header.set_gid(0);
        header
            .set_path(name)
            .map_err(BundleError::io(format!("writing bundle entry `{name}`")))?;
        header.set_cksum();
        head.extend_from_slice(header.as_bytes());
        if let Some(data) = data {
            head.extend_from_slice(data);
            head.resize(head.len() + padding(data.len() as u64), 0);
        }
        Ok::<(), BundleError>(())
    };
    let marker = format!("{FORMAT_MARKER}\n");
    entry(FORMAT_ENTRY, Some(marker.as_bytes()), marker.len() as u64)?;
    entry(
        MANIFEST_ENTRY,
        Some(manifest_bytes),
        manifest_bytes.len() as u64,
    )?;
    if let Some(update) = trust_update {
        entry(TRUST_UPDATE_ENTRY, Some(update), update.len() as u64)?;
    }
    let mut sorted: Vec<&Signature> = signatures.iter().collect();
    sorted.sort_by_key(|s| s.key_id().to_string());
    for sig in sorted {
        let text = sig.to_minisign();
        entry(
            &signature_entry_name(sig),
            Some(text.as_bytes()),
            text.len() as u64,
        )?;
    }
    entry(PAYLOAD_ENTRY, None, payload_size)?;
    Ok(head)
}

/// The bytes of a bundle after `payload_size` payload bytes: zeros up to the
/// next 512-byte block, then the tar end-of-archive (two zero blocks).
pub fn bundle_tail(payload_size: u64) -> Vec<u8> {
    vec![0; padding(payload_size) + 2 * BLOCK_SIZE]
}

/// Zero bytes that pad `len` bytes of entry data to a whole tar block.
fn padding(len: u64) -> usize {
    let rest = (len % BLOCK_SIZE as u64) as usize;
    if rest == 0 {
        0
    } else {
        BLOCK_SIZE - rest
    }
}

/// Copies a bundle from `reader` to `out` with `signatures` in place of the
/// ones it had, streaming the payload unchanged (for `airlock-build sign`).
/// The caller checked the bundle and made the new signatures over
/// `header.manifest_bytes` first.
///
/// # Errors
/// [`BundleError`] when the input is not a well-formed bundle or writing fails.
pub fn rewrite_signatures<R: Read, W: Write>(
    reader: R,
    out: W,
    signatures: &[Signature],
) -> Result<W, BundleError> {
    let mut archive = tar::Archive::new(ContainerGuard::new(reader));
    let entries = archive
        .entries()
        .map_err(BundleError::io("reading the bundle"))?;
    let mut manifest_bytes = None;
    let mut trust_update = None;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| container_error("cannot read a container entry".into(), e))?;
        let name = entry_name(&entry)?;
        if name == MANIFEST_ENTRY {
            manifest_bytes = Some(read_small(&mut entry, MANIFEST_ENTRY, MAX_MANIFEST_SIZE)?);
        } else if name == TRUST_UPDATE_ENTRY {
            trust_update = Some(read_small(
                &mut entry,
                TRUST_UPDATE_ENTRY,
                crate::trust::MAX_UPDATE_SIZE,
            )?);
        } else if name == PAYLOAD_ENTRY {
            let bytes = manifest_bytes.ok_or_else(|| {
                BundleError::Malformed("the payload comes before the manifest".into())
            })?;
            let manifest = Manifest::from_json(&bytes)?;
            let size = manifest.payload.size;
            return write_bundle_carrying(
                out,
                &bytes,
                trust_update.as_deref(),
                signatures,
                &mut entry,
                size,
                manifest.created_at,
            );
        }
    }
    Err(BundleError::Malformed("the bundle has no payload".into()))
}

fn read_small(entry: &mut dyn Read, name: &str, max: u64) -> Result<Vec<u8>, BundleError> {
    let mut buf = Vec::new();
    entry
        .take(max + 1)
        .read_to_end(&mut buf)
        .map_err(BundleError::io(format!(
            "reading bundle entry `{}`",
            shown(name)
        )))?;
    if buf.len() as u64 > max {
        return Err(BundleError::Malformed(format!(
            "entry `{}` is larger than {max} bytes",
            shown(name)
        )));
    }
    Ok(buf)
}

fn entry_name(entry: &tar::Entry<'_, impl Read>) -> Result<String, BundleError> {
    let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    if entry.header().entry_type() != tar::EntryType::Regular {
        return Err(BundleError::Malformed(format!(
            "container entry `{}` is not a regular file",
            shown(&name)
        )));
    }
    Ok(name)
}

/// Reads a bundle from `reader` in one pass.
///
/// After the header, `check` decides whether to go on (it verifies signatures,
/// trust, expiry and platform); its error stops the read before any payload
/// byte is read. With `sink` `None` the read ends there (for `inspect`);
/// otherwise every payload file goes to the sink, and the container's end is
/// checked (no trailing data).
///
/// # Errors
/// [`BundleError`] naming the first entry or chunk that breaks a rule.
pub fn read_bundle<R: Read>(
    reader: R,
    check: impl FnOnce(&BundleHeader) -> Result<(), BundleError>,
    sink: Option<&mut dyn PayloadSink>,
) -> Result<BundleHeader, BundleError> {
    let mut archive = tar::Archive::new(ContainerGuard::new(reader));
    let header;
    {
        let mut entries = archive
            .entries()
            .map_err(BundleError::io("reading the bundle"))?;
        let mut next = |what: &str| -> Result<_, BundleError> {
            match entries.next() {
                Some(entry) => entry.map_err(|e| {
                    container_error(format!("cannot read the container entry for {what}"), e)
                }),
                None => Err(BundleError::Malformed(format!(
                    "the file ends before {what}"
                ))),
            }
        };

        let mut first = next("the format marker").map_err(|e| match e {
            refused @ BundleError::Container(_) => refused,
            _ => BundleError::Malformed(
                "this is not an airlock bundle (no tar container with an `airlock-format` entry)"
                    .into(),
            ),
        })?;
        let name = entry_name(&first)?;
        if name != FORMAT_ENTRY {
            return Err(BundleError::Malformed(format!(
                "this is not an airlock bundle: the first entry is `{}`, not `{FORMAT_ENTRY}`",
                shown(&name)
            )));
        }
        let marker = read_small(&mut first, FORMAT_ENTRY, 64)?;
        let marker = String::from_utf8_lossy(&marker).trim_end().to_owned();
        if marker != FORMAT_MARKER {
            return Err(crate::error::ManifestError::UnknownFormat(marker).into());
        }
        drop(first);

        let mut manifest_entry = next("manifest.json")?;
        let name = entry_name(&manifest_entry)?;
        if name != MANIFEST_ENTRY {
            return Err(BundleError::Malformed(format!(
                "expected `{MANIFEST_ENTRY}` as the second entry, found `{}`",
                shown(&name)
            )));
        }
        let manifest_bytes = read_small(&mut manifest_entry, MANIFEST_ENTRY, MAX_MANIFEST_SIZE)?;
        drop(manifest_entry);
        let manifest = Manifest::from_json(&manifest_bytes)?;

        let mut signatures = Vec::new();
        let mut trust_update = None;
        let mut payload_entry = loop {
            let mut entry = next("the payload")?;
            let name = entry_name(&entry)?;
            if name == PAYLOAD_ENTRY {
                break entry;
            }
            if name == TRUST_UPDATE_ENTRY && signatures.is_empty() && trust_update.is_none() {
                let bytes = read_small(&mut entry, &name, crate::trust::MAX_UPDATE_SIZE)?;
                crate::trust::TrustUpdate::from_json(&bytes).map_err(|e| {
                    BundleError::Malformed(format!("entry `{TRUST_UPDATE_ENTRY}`: {e}"))
                })?;
                trust_update = Some(bytes);
                continue;
            }
            if !(name.starts_with("signature-") && name.ends_with(".minisig")) {
                return Err(BundleError::Malformed(format!(
                    "unexpected container entry `{}` (expected `{TRUST_UPDATE_ENTRY}` or signatures, then `{PAYLOAD_ENTRY}`)",
                    shown(&name)
                )));
            }
            if signatures.len() == MAX_SIGNATURES {
                return Err(BundleError::Malformed(format!(
                    "more than {MAX_SIGNATURES} signatures"
                )));
            }
            let text = read_small(&mut entry, &name, MAX_SIGNATURE_SIZE)?;
            let text = String::from_utf8(text).map_err(|_| {
                BundleError::Malformed(format!("entry `{}` is not UTF-8", shown(&name)))
            })?;
            let sig = Signature::from_minisign(&text)?;
            if name != signature_entry_name(&sig) {
                return Err(BundleError::Malformed(format!(
                    "entry `{}` holds a signature by key {}",
                    shown(&name),
                    sig.key_id()
                )));
            }
            signatures.push(sig);
        };

        header = BundleHeader {
            manifest,
            manifest_bytes,
            signatures,
            trust_update,
            payload_offset: payload_entry.raw_file_position(),
        };
        check(&header)?;
        let Some(sink) = sink else {
            return Ok(header);
        };

        if payload_entry.header().size().ok() != Some(header.manifest.payload.size) {
            return Err(BundleError::Malformed(format!(
                "the payload entry's size differs from the {} bytes the manifest signs",
                header.manifest.payload.size
            )));
        }
        read_payload(&mut payload_entry, &header.manifest, sink)?;
        drop(payload_entry);

        if let Some(extra) = entries.next() {
            let what = extra
                .map(|e| String::from_utf8_lossy(&e.path_bytes()).into_owned())
                .unwrap_or_else(|_| "unreadable data".into());
            return Err(BundleError::Malformed(format!(
                "trailing data after the payload: `{}`",
                shown(&what)
            )));
        }
    }
    let mut rest = archive.into_inner();
    let mut tail = Vec::new();
    (&mut rest)
        .take(MAX_TRAILING_ZEROS + 1)
        .read_to_end(&mut tail)
        .map_err(BundleError::io("reading the end of the bundle"))?;
    if tail.len() as u64 > MAX_TRAILING_ZEROS || tail.iter().any(|b| *b != 0) {
        return Err(BundleError::Malformed(
            "trailing data after the end of the container".into(),
        ));
    }
    Ok(header)
}

/// Streams the payload entry through chunk verification, zstd and the inner tar.
fn read_payload(
    compressed: &mut dyn Read,
    manifest: &Manifest,
    sink: &mut dyn PayloadSink,
) -> Result<(), BundleError> {
    let verifier = ChunkVerifier::new(compressed, &manifest.payload);
    let decoder = zstd::stream::read::Decoder::new(verifier)
        .map_err(BundleError::io("starting the zstd decoder"))?;
    // Bound what decompression may produce: the files, a few header blocks
    // each (long names, PAX) and the end-of-archive blocks. No zip bombs.
    // Saturating: a signed manifest may still declare absurd sizes.
    let files = u64::try_from(manifest.files.len()).unwrap_or(u64::MAX);
    let bound = manifest
        .payload
        .unpacked_size
        .saturating_add(files.saturating_add(2).saturating_mul(4 * 512))
        .saturating_add(manifest.files.iter().fold(0u64, |sum, f| {
            sum.saturating_add(u64::try_from(f.path.as_str().len()).unwrap_or(u64::MAX))
                .saturating_add(512)
        }));
    let mut inner = tar::Archive::new(decoder.take(bound));
    let index: HashMap<&BundlePath, usize> = manifest
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| (&f.path, i))
        .collect();
    let mut seen = vec![false; manifest.files.len()];
    let mut expected_next = 0usize;
    {
        let entries = inner
            .entries()
            .map_err(|e| unwrap_io("reading the payload", e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| unwrap_io("reading a payload entry header", e))?;
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let kind = entry.header().entry_type();
            if kind == tar::EntryType::Directory {
                BundlePath::from_tar_bytes(raw.strip_suffix(b"/").unwrap_or(&raw))?;
                continue;
            }
            if kind != tar::EntryType::Regular {
                let what = match kind {
                    tar::EntryType::Symlink => "a symbolic link",
                    tar::EntryType::Link => "a hard link",
                    tar::EntryType::Char | tar::EntryType::Block => "a device file",
                    tar::EntryType::Fifo => "a FIFO",
                    _ => "not a regular file",
                };
                return Err(BundleError::entry(
                    shown,
                    format!("is {what}; only regular files and directories are allowed"),
                ));
            }
            let path = BundlePath::from_tar_bytes(&raw)?;
            let Some(&i) = index.get(&path) else {
                return Err(BundleError::entry(shown, "is not listed in the manifest"));
            };
            if seen[i] {
                return Err(BundleError::entry(shown, "appears twice in the payload"));
            }
            if i != expected_next {
                return Err(BundleError::entry(shown, "is out of manifest order"));
            }
            let file = &manifest.files[i];
            let size = entry
                .header()
                .size()
                .map_err(|e| BundleError::entry(shown.clone(), format!("bad size field: {e}")))?;
            if size != file.size {
                return Err(BundleError::entry(
                    shown,
                    format!("is {size} bytes but the manifest says {}", file.size),
                ));
            }
            let mut hashing = FileHashing::new((&mut entry).take(size), size);
            sink.write_file(file, &mut hashing)?;
            // Drain what the sink did not read so the hash covers everything.
            io::copy(&mut hashing, &mut io::sink())
                .map_err(|e| unwrap_io(&format!("reading payload entry `{shown}`"), e))?;
            let (digest, count) = hashing
                .finish()
                .map_err(|e| unwrap_io(&format!("hashing payload entry `{shown}`"), e))?;
            if count != file.size {
                return Err(BundleError::entry(shown, "ends early"));
            }
            if digest != file.sha256 {
                return Err(BundleError::entry(
                    shown,
                    format!("SHA-256 is {digest} but the manifest says {}", file.sha256),
                ));
            }
            sink.verified(file)?;
            seen[i] = true;
            expected_next = i + 1;
        }
    }
    if let Some(missing) = manifest.files.iter().zip(&seen).find(|(_, s)| !**s) {
        return Err(BundleError::entry(
            missing.0.path.as_str(),
            "is listed in the manifest but missing from the payload",
        ));
    }
    // Read the rest of the decompressed stream (end-of-archive zeros) and the
    // rest of the compressed one, so every chunk and the zstd checksum are checked.
    let mut bounded = inner.into_inner();
    let mut zeros = [0u8; 8192];
    loop {
        let n = bounded
            .read(&mut zeros)
            .map_err(|e| unwrap_io("reading the end of the payload", e))?;
        if n == 0 {
            break;
        }
        if zeros[..n].iter().any(|b| *b != 0) {
            return Err(BundleError::Malformed(
                "data after the payload's end-of-archive".into(),
            ));
        }
    }
    if bounded.limit() == 0 {
        return Err(BundleError::Malformed(
            "the payload decompresses to more than its manifest allows".into(),
        ));
    }
    let mut verifier = bounded.into_inner().finish();
    let n = io::copy(&mut verifier, &mut io::sink())
        .map_err(|e| unwrap_io("reading the end of the payload", e))?;
    if n != 0 {
        return Err(BundleError::Malformed(format!(
            "{n} bytes after the payload's zstd frame"
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::manifest::tests::sample;
    use crate::manifest::{PayloadInfo, Role};
    use crate::payload::PayloadWriter;
    use crate::signing::{SecretKey, Trust};
    use crate::Sha256Digest;

    struct Collect(Vec<(String, Vec<u8>)>, usize);
    impl PayloadSink for Collect {
        fn write_file(&mut self, e: &FileEntry, r: &mut dyn Read) -> Result<(), BundleError> {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            self.0.push((e.path.to_string(), v));
            Ok(())
        }
        fn verified(&mut self, _: &FileEntry) -> Result<(), BundleError> {
            self.1 += 1;
            Ok(())
        }
    }

    pub(crate) fn build(files: &[(&str, &[u8])]) -> (Vec<u8>, SecretKey) {
        let mut writer = PayloadWriter::new(Vec::new(), 3, 0, 64 * 1024, 0).unwrap();
        let mut manifest = sample();
        manifest.files.clear();
        for (path, data) in files {
            let path = BundlePath::parse(path).unwrap();
            let sha256 = writer
                .append(&path, 0o644, data.len() as u64, *data)
                .unwrap();
            manifest.files.push(FileEntry {
                path,
                role: Role::Script,
                size: data.len() as u64,
                mode: 0o644,
                sha256,
                name: None,
                install_path: None,
                migration: None,
            });
        }
        let (payload, info) = writer.finish().unwrap();
        manifest.payload = info;
        let bytes = manifest.to_json().unwrap();
        let key = SecretKey::from_minisign(&SecretKey::generate(None).unwrap().secret_text, None)
            .unwrap();
        let sig = key.sign(&bytes, "t");
        let out = write_bundle(
            Vec::new(),
            &bytes,
            &[sig],
            &payload[..],
            payload.len() as u64,
            0,
        )
        .unwrap();
        (out, key)
    }

    #[test]
    fn a_carried_trust_update_is_read_kept_by_sign_and_refused_out_of_place() {
        let (plain, key) = build(&[("a", b"x")]);
        let header = read_bundle(&plain[..], |_| Ok(()), None).unwrap();
        let doc = crate::TrustDocument::new(2, &[key.public_key()], 1, 1, None).unwrap();
        let update = crate::TrustUpdate::unsigned(&doc)
            .unwrap()
            .to_json()
            .unwrap();
        let payload_at = usize::try_from(header.payload_offset).unwrap();
        let payload = &plain[payload_at..payload_at + header.manifest.payload.size as usize];
        let write = |update: Option<&[u8]>| {
            write_bundle_carrying(
                Vec::new(),
                &header.manifest_bytes,
                update,
                &header.signatures,
                payload,
                payload.len() as u64,
                0,
            )
            .unwrap()
        };
        let carrying = write(Some(&update));
        let read_back = read_bundle(&carrying[..], |_| Ok(()), Some(&mut DiscardSink)).unwrap();
        assert_eq!(read_back.trust_update.as_deref(), Some(&update[..]));
        // `sign` keeps it.
        let other = SecretKey::from_minisign(&SecretKey::generate(None).unwrap().secret_text, None)
            .unwrap();
        let mut sigs = header.signatures.clone();
        sigs.push(other.sign(&header.manifest_bytes, "t"));
        let resigned = rewrite_signatures(&carrying[..], Vec::new(), &sigs).unwrap();
        let read_back = read_bundle(&resigned[..], |_| Ok(()), Some(&mut DiscardSink)).unwrap();
        assert_eq!(read_back.trust_update.as_deref(), Some(&update[..]));
        assert_eq!(read_back.signatures.len(), 2);
        // Not a trust update: refused by name.
        let junk = write(Some(b"{}"));
        let err = read_bundle(&junk[..], |_| Ok(()), None).unwrap_err();
        assert!(
            err.to_string().contains("entry `trust-update.json`"),
            "{err}"
        );
    }

    fn read(bytes: &[u8], key: &SecretKey) -> Result<Collect, BundleError> {
        let trust = Trust::new(vec![key.public_key()], 1).unwrap();
        let mut sink = Collect(Vec::new(), 0);
        read_bundle(
            bytes,
            |h| {
                trust
                    .check(&h.manifest_bytes, &h.signatures)
                    .map(|_| ())
                    .map_err(Into::into)
            },
            Some(&mut sink),
        )?;
        Ok(sink)
    }

    #[test]
    fn the_head_and_tail_are_the_bytes_the_tar_crate_writes_around_the_payload() {
        let key = SecretKey::from_minisign(&SecretKey::generate(None).unwrap().secret_text, None)
            .unwrap();
        let other = SecretKey::from_minisign(&SecretKey::generate(None).unwrap().secret_text, None)
            .unwrap();
        let manifest = b"{\"manifest\": 1}";
        let update = b"{\"update\": 2}";
        let sigs = [other.sign(manifest, "t"), key.sign(manifest, "t")];
        for size in [0u64, 1, 511, 512, 513, 70_000] {
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut tar = tar::Builder::new(Vec::new());
            let mut append = |name: &str, data: &[u8]| {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                header.set_mtime(1_700_000_000);
                header.set_uid(0);
                header.set_gid(0);
                tar.append_data(&mut header, name, data).unwrap();
            };
            append(FORMAT_ENTRY, format!("{FORMAT_MARKER}\n").as_bytes());
            append(MANIFEST_ENTRY, manifest);
            append(TRUST_UPDATE_ENTRY, update);
            let mut sorted: Vec<&Signature> = sigs.iter().collect();
            sorted.sort_by_key(|s| s.key_id().to_string());
            for sig in sorted {
                append(&signature_entry_name(sig), sig.to_minisign().as_bytes());
            }
            append(PAYLOAD_ENTRY, &payload);
            let expected = tar.into_inner().unwrap();

            let mut written =
                bundle_head(manifest, Some(update), &sigs, size, 1_700_000_000).unwrap();
            written.extend_from_slice(&payload);
            written.extend_from_slice(&bundle_tail(size));
            assert_eq!(written, expected, "payload of {size} bytes");
            let streamed = write_bundle_carrying(
                Vec::new(),
                manifest,
                Some(update),
                &sigs,
                &payload[..],
                size,
                1_700_000_000,
            )
            .unwrap();
            assert_eq!(streamed, expected, "payload of {size} bytes, streamed");
        }
        let short = write_bundle(Vec::new(), manifest, &sigs, &b"abc"[..], 4, 0);
        assert!(
            matches!(short, Err(BundleError::Malformed(m)) if m.contains("fewer than 4 bytes"))
        );
    }

    #[test]
    fn round_trip() {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (bytes, key) = build(&[("a/one", b"hello"), ("b", &big)]);
        let got = read(&bytes, &key).unwrap();
        assert_eq!(got.1, 2);
        assert_eq!(got.0[0], ("a/one".to_string(), b"hello".to_vec()));
        assert_eq!(got.0[1].1, big);
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let (bytes, key) = build(&[("a", b"hello world")]);
        // Flip one byte in every 97th position across the whole file.
        for i in (0..bytes.len()).step_by(97) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x55;
            if let Ok(sink) = read(&bad, &key) {
                // Only padding bytes in tar headers may change without effect.
                assert_eq!(sink.0[0].1, b"hello world", "byte {i} changed the content");
            }
        }
    }

    #[test]
    fn trailing_data_is_refused() {
        let (mut bytes, key) = build(&[("a", b"x")]);
        bytes.extend_from_slice(b"junk");
        let err = read(&bytes, &key).err().unwrap().to_string();
        assert!(err.contains("trailing data"), "{err}");
    }

    #[test]
    fn tampered_chunk_is_caught_before_decompression() {
        let info = PayloadInfo {
            compression: "zstd".into(),
            size: 5,
            chunk_size: 64 * 1024,
            chunks: vec![Sha256Digest::of(b"hello")],
            unpacked_size: 0,
        };
        let mut v = ChunkVerifier::new(&b"hellO"[..], &info);
        let err = io::copy(&mut v, &mut io::sink()).unwrap_err();
        assert!(matches!(
            unwrap_io("x", err),
            BundleError::ChunkMismatch { index: 0, .. }
        ));
    }

    #[test]
    fn after_a_refused_chunk_no_later_chunk_is_handed_out() {
        let chunk = 64 * 1024;
        let second = vec![2u8; chunk];
        let info = PayloadInfo {
            compression: "zstd".into(),
            size: 2 * chunk as u64,
            chunk_size: chunk as u64,
            chunks: vec![
                Sha256Digest::of(&vec![1u8; chunk]),
                Sha256Digest::of(&second),
            ],
            unpacked_size: 0,
        };
        let mut data = vec![9u8; chunk];
        data.extend_from_slice(&second);
        let mut v = ChunkVerifier::new(&data[..], &info);
        let mut buf = vec![0u8; chunk];
        let err = v.read(&mut buf).unwrap_err();
        assert!(matches!(
            unwrap_io("x", err),
            BundleError::ChunkMismatch { index: 0, .. }
        ));
        // The second chunk is good, but it must not come out after the first failed.
        assert!(v.read(&mut buf).is_err());
    }

    /// A bundle whose payload tar holds `entries` (raw name, type, data) while
    /// the signed manifest lists `listed` (path, data).
    fn craft(
        entries: &[(&str, tar::EntryType, &[u8])],
        listed: &[(&str, &[u8])],
    ) -> (Vec<u8>, SecretKey) {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(if *kind == tar::EntryType::Regular {
                data.len() as u64
            } else {
                0
            });
            header.set_mode(0o644);
            header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            if *kind == tar::EntryType::Symlink {
                header.set_link_name("/etc/passwd").unwrap();
            }
            header.set_cksum();
            let body: &[u8] = if *kind == tar::EntryType::Regular {
                data
            } else {
                &[]
            };
            tar.append(&header, body).unwrap();
        }
        let payload = zstd::encode_all(&tar.into_inner().unwrap()[..], 3).unwrap();
        craft_payload(&payload, listed)
    }

    /// A bundle whose signed payload is `payload` (compressed bytes, as
    /// they are) while the signed manifest lists `listed` (path, data).
    fn craft_payload(payload: &[u8], listed: &[(&str, &[u8])]) -> (Vec<u8>, SecretKey) {
        let mut manifest = sample();
        manifest.files = listed
            .iter()
            .map(|(path, data)| FileEntry {
                path: BundlePath::parse(path).unwrap(),
                role: Role::Script,
                size: data.len() as u64,
                mode: 0o644,
                sha256: Sha256Digest::of(data),
                name: None,
                install_path: None,
                migration: None,
            })
            .collect();
        manifest.payload = PayloadInfo {
            compression: "zstd".into(),
            size: payload.len() as u64,
            chunk_size: 64 * 1024,
            chunks: payload.chunks(64 * 1024).map(Sha256Digest::of).collect(),
            unpacked_size: listed.iter().map(|(_, d)| d.len() as u64).sum(),
        };
        let bytes = manifest.to_json().unwrap();
        let key = SecretKey::from_minisign(&SecretKey::generate(None).unwrap().secret_text, None)
            .unwrap();
        let sig = key.sign(&bytes, "t");
        let out =
            write_bundle(Vec::new(), &bytes, &[sig], payload, payload.len() as u64, 0).unwrap();
        (out, key)
    }

    /// A reader that counts what was read from it.
    struct Counting<R> {
        inner: R,
        read: std::rc::Rc<std::cell::Cell<u64>>,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(out)?;
            self.read.set(self.read.get() + n as u64);
            Ok(n)
        }
    }

    /// A container that starts with an extension record of `kind` and
    /// `size` bytes (the bytes come from `io::repeat`, never stored).
    fn extension_first(kind: tar::EntryType, size: u64) -> impl Read {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        header.set_cksum();
        io::Cursor::new(header.as_bytes().to_vec()).chain(io::repeat(b'a').take(size))
    }

    #[test]
    fn an_extension_record_before_the_signature_check_is_refused_unread() {
        for kind in [
            tar::EntryType::GNULongName,
            tar::EntryType::XHeader,
            tar::EntryType::XGlobalHeader,
        ] {
            let read = std::rc::Rc::new(std::cell::Cell::new(0));
            let reader = Counting {
                inner: extension_first(kind, 256 << 20),
                read: read.clone(),
            };
            let err = read_bundle(reader, |_| Ok(()), None).expect_err("accepted");
            assert!(
                matches!(err, BundleError::Container(_)),
                "{kind:?}: {err:?}"
            );
            let text = err.to_string();
            assert!(text.contains("of 268435456 bytes"), "{text}");
            assert!(text.len() < 300, "{text}");
            assert!(read.get() <= 512, "{kind:?}: read {} bytes", read.get());
        }
    }

    #[test]
    fn a_name_with_terminal_escapes_is_shown_escaped() {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(1);
        let name = b"\x1b[2Kok \rx";
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(&[b'x'; 512]);
        bytes.extend_from_slice(&[0; 1024]);
        let err = read_bundle(&bytes[..], |_| Ok(()), None)
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains('\x1b') && !err.contains('\r'), "{err:?}");
        assert!(err.contains("\\u{1b}[2Kok \\rx"), "{err}");
    }

    #[test]
    fn a_signed_payload_that_does_not_decompress_is_an_invalid_bundle_not_an_io_error() {
        let hello: &[u8] = b"hello";
        let mut big_window = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        big_window.include_contentsize(false).unwrap();
        big_window.window_log(31).unwrap();
        io::Write::write_all(&mut big_window, b"hello").unwrap();
        let big_window = big_window.finish().unwrap();
        for (what, payload) in [
            ("not zstd", b"this is not a zstd frame at all".to_vec()),
            ("a 2 GiB window", big_window),
            (
                "truncated",
                zstd::encode_all(&b"hello"[..], 3).unwrap()[..8].to_vec(),
            ),
            ("empty", Vec::new()),
        ] {
            let (bytes, key) = craft_payload(&payload, &[("a", hello)]);
            let err = read(&bytes, &key).err().expect("accepted");
            assert!(matches!(err, BundleError::Malformed(_)), "{what}: {err:?}");
            assert!(
                err.to_string().contains("does not decompress"),
                "{what}: {err}"
            );
        }
    }

    #[track_caller]
    fn refused(entries: &[(&str, tar::EntryType, &[u8])], listed: &[(&str, &[u8])], want: &str) {
        let (bytes, key) = craft(entries, listed);
        let err = read(&bytes, &key)
            .err()
            .expect("bundle was accepted")
            .to_string();
        assert!(err.contains(want), "expected `{want}` in `{err}`");
    }

    #[test]
    fn payload_rules_are_enforced_with_the_entry_named() {
        use tar::EntryType::{Char, Regular, Symlink};
        let hello: &[u8] = b"hello";
        refused(
            &[("a", Symlink, hello)],
            &[("a", hello)],
            "payload entry `a`: is a symbolic link",
        );
        refused(
            &[("a", Char, hello)],
            &[("a", hello)],
            "payload entry `a`: is a device file",
        );
        refused(
            &[("a", Regular, hello), ("a", Regular, hello)],
            &[("a", hello)],
            "payload entry `a`: appears twice",
        );
        refused(
            &[("a", Regular, hello), ("b", Regular, hello)],
            &[("a", hello)],
            "payload entry `b`: is not listed in the manifest",
        );
        refused(
            &[("a", Regular, hello)],
            &[("a", hello), ("b", hello)],
            "payload entry `b`: is listed in the manifest but missing",
        );
        refused(
            &[("a", Regular, hello)],
            &[("a", b"hell")],
            "payload entry `a`: is 5 bytes but the manifest says 4",
        );
        refused(
            &[("a", Regular, hello)],
            &[("a", b"hellO")],
            "payload entry `a`: SHA-256 is",
        );
        refused(
            &[("/etc/x", Regular, hello)],
            &[("a", hello)],
            "invalid path `/etc/x`: absolute paths are not allowed",
        );
        refused(
            &[("a/../../x", Regular, hello)],
            &[("a", hello)],
            "invalid path `a/../../x`: `..` components are not allowed",
        );
    }

    #[test]
    fn a_newer_format_is_refused_by_its_version() {
        let (mut bytes, key) = build(&[("a", b"x")]);
        let at = bytes
            .windows(17)
            .position(|w| w == b"airlock-bundle/1\n")
            .unwrap();
        bytes[at + 15] = b'2';
        let err = read(&bytes, &key).err().unwrap().to_string();
        assert!(
            err.contains("bundle format `airlock-bundle/2` is not supported"),
            "{err}"
        );
    }

    #[test]
    fn inspect_reads_no_payload() {
        let (bytes, _) = build(&[("a", b"x")]);
        // Cut the file in the middle of the payload: the header still reads.
        let cut = &bytes[..bytes.len() - 1100];
        let header = read_bundle(cut, |_| Ok(()), None).unwrap();
        assert_eq!(header.signatures.len(), 1);
        assert!(read_bundle(cut, |_| Ok(()), Some(&mut DiscardSink)).is_err());
    }
}
