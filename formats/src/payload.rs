//! The payload: a zstd-compressed tar of the files the manifest lists
//! (docs/FORMAT.md, "Payload"), written with deterministic headers and read
//! behind a chunk verifier, so the zstd decoder only sees signed bytes.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use crate::digest::{HashingReader, Sha256Digest};
use crate::error::BundleError;
use crate::manifest::PayloadInfo;
use crate::path::BundlePath;

/// A writer that records the SHA-256 of each fixed-size chunk passing through it.
struct ChunkHasher<W> {
    inner: W,
    chunk_size: u64,
    in_chunk: u64,
    total: u64,
    hasher: Sha256,
    chunks: Vec<Sha256Digest>,
}

impl<W: Write> Write for ChunkHasher<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = (self.chunk_size - self.in_chunk) as usize;
        let n = self.inner.write(&buf[..buf.len().min(room)])?;
        self.hasher.update(&buf[..n]);
        self.in_chunk += n as u64;
        self.total += n as u64;
        if self.in_chunk == self.chunk_size {
            self.chunks.push(Sha256Digest(
                std::mem::take(&mut self.hasher).finalize().into(),
            ));
            self.in_chunk = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a payload: each file is read once, hashed and compressed in the same pass.
pub struct PayloadWriter<W: Write> {
    tar: tar::Builder<zstd::stream::write::Encoder<'static, ChunkHasher<W>>>,
    mtime: u64,
    unpacked: u64,
}

impl<W: Write> PayloadWriter<W> {
    /// Starts a payload into `out`.
    ///
    /// `level` is the zstd level (1..=22), `workers` the number of zstd threads
    /// (0 = single-threaded), `chunk_size` the chunk size in bytes, `mtime` the
    /// time stamped on every entry (Unix seconds).
    ///
    /// # Errors
    /// [`BundleError::Io`] when zstd refuses the parameters.
    pub fn new(
        out: W,
        level: i32,
        workers: u32,
        chunk_size: u64,
        mtime: u64,
    ) -> Result<Self, BundleError> {
        let hasher = ChunkHasher {
            inner: out,
            chunk_size,
            in_chunk: 0,
            total: 0,
            hasher: Sha256::new(),
            chunks: Vec::new(),
        };
        let mut encoder = zstd::stream::write::Encoder::new(hasher, level)
            .map_err(BundleError::io("starting the zstd encoder"))?;
        if workers > 0 {
            encoder
                .multithread(workers)
                .map_err(BundleError::io("starting zstd worker threads"))?;
        }
        encoder
            .include_checksum(true)
            .map_err(BundleError::io("configuring zstd"))?;
        let mut tar = tar::Builder::new(encoder);
        tar.mode(tar::HeaderMode::Deterministic);
        Ok(Self {
            tar,
            mtime,
            unpacked: 0,
        })
    }

    /// Appends one file of exactly `size` bytes from `source`; returns its SHA-256.
    ///
    /// # Errors
    /// [`BundleError::Entry`] when `source` holds fewer or more than `size` bytes
    /// (the file changed while it was read); [`BundleError::Io`] on write errors.
    pub fn append(
        &mut self,
        path: &BundlePath,
        mode: u32,
        size: u64,
        source: impl Read,
    ) -> Result<Sha256Digest, BundleError> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(size);
        header.set_mode(mode & 0o777);
        header.set_mtime(self.mtime);
        header.set_uid(0);
        header.set_gid(0);
        let mut hashing = HashingReader::new(source);
        let mut limited = (&mut hashing).take(size);
        self.tar
            .append_data(&mut header, path.as_str(), &mut limited)
            .map_err(BundleError::io(format!("adding `{path}` to the payload")))?;
        let mut probe = [0u8; 1];
        let extra = hashing
            .read(&mut probe)
            .map_err(BundleError::io(format!("reading `{path}`")))?;
        let (digest, count) = hashing.finish();
        if count != size || extra != 0 {
            return Err(BundleError::entry(
                path.as_str(),
                format!("the source changed size while it was read (expected {size} bytes)"),
            ));
        }
        self.unpacked += size;
        Ok(digest)
    }

    /// Ends the tar and the zstd frame; returns the output and the payload's integrity data.
    ///
    /// # Errors
    /// [`BundleError::Io`] on write errors.
    pub fn finish(self) -> Result<(W, PayloadInfo), BundleError> {
        let encoder = self
            .tar
            .into_inner()
            .map_err(BundleError::io("ending the payload tar"))?;
        let mut hasher = encoder
            .finish()
            .map_err(BundleError::io("ending the zstd frame"))?;
        hasher
            .flush()
            .map_err(BundleError::io("flushing the payload"))?;
        if hasher.in_chunk > 0 {
            hasher.chunks.push(Sha256Digest(
                std::mem::take(&mut hasher.hasher).finalize().into(),
            ));
        }
        let info = PayloadInfo {
            compression: "zstd".into(),
            size: hasher.total,
            chunk_size: hasher.chunk_size,
            chunks: hasher.chunks,
            unpacked_size: self.unpacked,
        };
        Ok((hasher.inner, info))
    }
}

/// A reader over the compressed payload that hands out a chunk only after its
/// SHA-256 matched the manifest, and fails at the end unless exactly
/// `payload.size` bytes came.
///
/// It reads one chunk ahead: while the caller (the zstd decoder) consumes
/// chunk N, chunk N+1 is already read and its SHA-256 computed on a thread
/// beside it. A chunk still reaches the caller only once its hash matched;
/// an error reading ahead is kept and returned when the caller reaches that
/// chunk, so errors come in the order a plain sequential read gives them.
pub(crate) struct ChunkVerifier<'a, R> {
    inner: R,
    info: &'a PayloadInfo,
    buf: Vec<u8>,
    pos: usize,
    /// Index and byte range of the next chunk to read from `inner`.
    next_chunk: usize,
    offset: u64,
    /// The chunk read ahead: its index and range, and its bytes and hash
    /// (or the error reading it), once the hashing thread is done.
    ahead: Option<Ahead>,
    hashing: Option<Hashing>,
    /// Set by the first error: every later read fails too, so no chunk
    /// after a refused one is ever handed out.
    failed: bool,
}

struct Ahead {
    index: usize,
    start: u64,
    end: u64,
    /// Bytes hashed inline, or a read error, when no thread is running.
    ready: Option<Result<(Vec<u8>, Sha256Digest), BundleError>>,
}

/// The thread that hashes chunks read ahead: bytes go one way, bytes and
/// their SHA-256 come back.
struct Hashing {
    to: std::sync::mpsc::SyncSender<Vec<u8>>,
    from: std::sync::mpsc::Receiver<(Vec<u8>, Sha256Digest)>,
}

impl Hashing {
    fn start() -> Option<Self> {
        let (to, chunks) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        let (done, from) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("chunk-sha256".into())
            .spawn(move || {
                for chunk in chunks {
                    let digest = Sha256Digest::of(&chunk);
                    if done.send((chunk, digest)).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(Self { to, from })
    }
}

impl<'a, R: Read> ChunkVerifier<'a, R> {
    pub(crate) fn new(inner: R, info: &'a PayloadInfo) -> Self {
        Self {
            inner,
            info,
            buf: Vec::new(),
            pos: 0,
            next_chunk: 0,
            offset: 0,
            ahead: None,
            hashing: Hashing::start(),
            failed: false,
        }
    }

    /// Reads the next chunk from `inner` into `spare` and starts its hash;
    /// does nothing when every chunk was read.
    fn read_ahead(&mut self, mut spare: Vec<u8>) {
        let index = self.next_chunk;
        if index >= self.info.chunks.len() {
            return;
        }
        let start = self.offset;
        let end = (start + self.info.chunk_size).min(self.info.size);
        spare.resize((end - start) as usize, 0);
        self.next_chunk += 1;
        self.offset = end;
        let ready = match self.inner.read_exact(&mut spare) {
            Err(e) => Some(Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                BundleError::Malformed(format!(
                    "the payload ends before the {} bytes the manifest signs",
                    self.info.size
                ))
            } else {
                BundleError::io("reading the payload")(e)
            })),
            Ok(()) => match &self.hashing {
                Some(hashing) => match hashing.to.send(spare) {
                    Ok(()) => None,
                    // The thread is gone: hash here.
                    Err(back) => {
                        self.hashing = None;
                        let digest = Sha256Digest::of(&back.0);
                        Some(Ok((back.0, digest)))
                    }
                },
                None => {
                    let digest = Sha256Digest::of(&spare);
                    Some(Ok((spare, digest)))
                }
            },
        };
        self.ahead = Some(Ahead {
            index,
            start,
            end,
            ready,
        });
    }

    fn fill(&mut self) -> Result<(), BundleError> {
        if self.ahead.is_none() {
            self.read_ahead(Vec::new());
        }
        let Some(ahead) = self.ahead.take() else {
            // All chunks consumed: anything more is data the signatures do not cover.
            let mut probe = [0u8; 1];
            let n = self
                .inner
                .read(&mut probe)
                .map_err(BundleError::io("reading the payload"))?;
            if n > 0 {
                return Err(BundleError::Malformed(format!(
                    "the payload is longer than the {} bytes the manifest signs",
                    self.info.size
                )));
            }
            self.buf.clear();
            self.pos = 0;
            return Ok(());
        };
        let (bytes, digest) = match ahead.ready {
            Some(ready) => ready?,
            None => match self.hashing.as_ref().map(|h| h.from.recv()) {
                Some(Ok(done)) => done,
                _ => {
                    return Err(BundleError::io("hashing the payload")(io::Error::other(
                        "the chunk hashing thread stopped",
                    )))
                }
            },
        };
        if self.info.chunks.get(ahead.index) != Some(&digest) {
            return Err(BundleError::ChunkMismatch {
                index: ahead.index,
                start: ahead.start,
                end: ahead.end,
            });
        }
        let spare = std::mem::replace(&mut self.buf, bytes);
        self.pos = 0;
        self.read_ahead(spare);
        Ok(())
    }
}

impl<R: Read> Read for ChunkVerifier<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other(BundleError::Malformed(
                "the payload was refused already".into(),
            )));
        }
        if self.pos == self.buf.len() {
            self.fill().map_err(|e| {
                self.failed = true;
                io::Error::other(e)
            })?;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Turns an error of the payload's reader chain (chunk verifier, zstd, tar)
/// back into a [`BundleError`]: the one the chunk verifier raised when it
/// carries one, an I/O error when reading the bundle file failed further
/// down, and otherwise an invalid bundle: the signed payload does not
/// decompress as a zstd frame holding a tar (not zstd, truncated, a window
/// larger than the decoder allows).
pub fn unwrap_io(context: &str, e: io::Error) -> BundleError {
    if e.get_ref().is_some_and(|inner| inner.is::<BundleError>()) {
        return match e.into_inner().map(|inner| inner.downcast::<BundleError>()) {
            Some(Ok(inner)) => *inner,
            Some(Err(other)) => BundleError::Io {
                context: context.to_owned(),
                source: io::Error::other(other),
            },
            None => BundleError::Malformed(context.to_owned()),
        };
    }
    if carries_io_error(&e) {
        return BundleError::Io {
            context: context.to_owned(),
            source: e,
        };
    }
    BundleError::Malformed(format!(
        "{context}: the payload does not decompress as a zstd frame holding a tar ({e})"
    ))
}

/// Whether a [`BundleError::Io`] is somewhere in `e`'s chain (a wrapper such
/// as the tar crate's may sit around the verifier's error).
fn carries_io_error(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(b) = e.downcast_ref::<BundleError>() {
        return matches!(b, BundleError::Io { .. });
    }
    let inner = e
        .downcast_ref::<io::Error>()
        .and_then(|io| io.get_ref())
        .map(|inner| inner as &(dyn std::error::Error + 'static));
    inner.or_else(|| e.source()).is_some_and(carries_io_error)
}
