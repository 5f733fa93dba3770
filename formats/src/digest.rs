//! SHA-256 digests, written as 64 lowercase hex digits in manifests.

use std::fmt;
use std::io::{self, Read};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest (FIPS 180-4), 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Parses 64 hex digits.
    ///
    /// # Errors
    /// A message when `s` is not 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| format!("`{s}` is not a SHA-256 digest (64 hex digits): {e}"))?;
        Ok(Self(out))
    }

    /// The digest as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// A reader that hashes what passes through it and counts the bytes.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest of everything read, and the byte count.
    pub fn finish(self) -> (Sha256Digest, u64) {
        (Sha256Digest(self.hasher.finalize().into()), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Size of the blocks a [`ParallelSha256`] hands to its thread, in bytes.
const BLOCK: usize = 1 << 20;

/// A SHA-256 computed on a thread of its own, beside the work that produces
/// the bytes (decompressing, copying): [`ParallelSha256::update`] copies the
/// bytes into 1 MiB blocks and hands each full one to the thread, at most
/// four waiting (about 6 MiB in all). Worth it for large inputs only: the
/// thread is started per hash.
pub struct ParallelSha256 {
    block: Vec<u8>,
    count: u64,
    how: Parallel,
}

enum Parallel {
    Thread {
        blocks: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
        spare: std::sync::mpsc::Receiver<Vec<u8>>,
        worker: std::thread::JoinHandle<Sha256Digest>,
    },
    /// The thread could not be started: hashed here instead.
    Inline(Sha256),
}

impl Default for ParallelSha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl ParallelSha256 {
    /// Starts the hashing thread (or hashes inline when it cannot start).
    pub fn new() -> Self {
        let (blocks, queue) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let (give_back, spare) = std::sync::mpsc::channel();
        let how = std::thread::Builder::new()
            .name("sha256".into())
            .spawn(move || {
                let mut hasher = Sha256::new();
                for mut block in queue {
                    hasher.update(&block);
                    block.clear();
                    let _ = give_back.send(block);
                }
                Sha256Digest(hasher.finalize().into())
            })
            .map_or_else(
                |_| Parallel::Inline(Sha256::new()),
                |worker| Parallel::Thread {
                    blocks: Some(blocks),
                    spare,
                    worker,
                },
            );
        Self {
            block: Vec::with_capacity(BLOCK),
            count: 0,
            how,
        }
    }

    /// Adds `data` to the hash.
    pub fn update(&mut self, mut data: &[u8]) {
        self.count += data.len() as u64;
        if let Parallel::Inline(hasher) = &mut self.how {
            hasher.update(data);
            return;
        }
        while !data.is_empty() {
            let n = (BLOCK - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.block.len() == BLOCK {
                self.ship();
            }
        }
    }

    fn ship(&mut self) {
        if let Parallel::Thread { blocks, spare, .. } = &mut self.how {
            let next = spare
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(BLOCK));
            let full = std::mem::replace(&mut self.block, next);
            if let Some(blocks) = blocks {
                // A send fails only when the thread is gone: finish() tells.
                let _ = blocks.send(full);
            }
        }
    }

    /// The digest of everything added, and the byte count.
    ///
    /// # Errors
    /// An [`io::Error`] when the hashing thread died.
    pub fn finish(mut self) -> io::Result<(Sha256Digest, u64)> {
        if !self.block.is_empty() {
            self.ship();
        }
        let digest = match self.how {
            Parallel::Inline(hasher) => Sha256Digest(hasher.finalize().into()),
            Parallel::Thread {
                mut blocks, worker, ..
            } => {
                drop(blocks.take());
                worker
                    .join()
                    .map_err(|_| io::Error::other("the SHA-256 thread died"))?
            }
        };
        Ok((digest, self.count))
    }
}

/// A reader that hashes what passes through it on another thread
/// ([`ParallelSha256`]) and counts the bytes.
pub struct ParallelHashingReader<R> {
    inner: R,
    hasher: ParallelSha256,
}

impl<R: Read> ParallelHashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: ParallelSha256::new(),
        }
    }

    /// The digest of everything read, and the byte count.
    ///
    /// # Errors
    /// As [`ParallelSha256::finish`].
    pub fn finish(self) -> io::Result<(Sha256Digest, u64)> {
        self.hasher.finish()
    }
}

impl<R: Read> Read for ParallelHashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Hashes a whole reader.
///
/// # Errors
/// Any read error of `reader`.
pub fn sha256_reader(reader: impl Read) -> io::Result<(Sha256Digest, u64)> {
    let mut hashing = HashingReader::new(reader);
    io::copy(&mut hashing, &mut io::sink())?;
    Ok(hashing.finish())
}

/// Files from this size on are hashed on a thread beside the work that
/// reads them ([`ParallelHashingReader`]); smaller ones inline, where starting
/// a thread would cost more than it saves. In bytes (4 MiB).
pub const PARALLEL_HASH_FROM: u64 = 4 << 20;

/// Hashes a payload file as it is read: inline, or on a thread of its own
/// for a large file.
pub enum FileHashing<R> {
    /// Hashed as it is read.
    Inline(HashingReader<R>),
    /// Hashed on a thread of its own.
    Parallel(ParallelHashingReader<R>),
}

impl<R: Read> FileHashing<R> {
    /// Hashes `inner`, a file of `size` bytes, on a thread from
    /// [`PARALLEL_HASH_FROM`] bytes on.
    pub fn new(inner: R, size: u64) -> Self {
        if size >= PARALLEL_HASH_FROM {
            Self::Parallel(ParallelHashingReader::new(inner))
        } else {
            Self::Inline(HashingReader::new(inner))
        }
    }

    /// The SHA-256 and byte count of what was read.
    ///
    /// # Errors
    /// When the hashing thread died.
    pub fn finish(self) -> io::Result<(Sha256Digest, u64)> {
        match self {
            Self::Inline(r) => Ok(r.finish()),
            Self::Parallel(r) => r.finish(),
        }
    }
}

impl<R: Read> Read for FileHashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Inline(r) => r.read(buf),
            Self::Parallel(r) => r.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector_and_hex_round_trip() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256Digest::from_hex(&d.to_hex()).unwrap(), d);
        assert!(Sha256Digest::from_hex("abc").is_err());
        let (r, n) = sha256_reader(&b"abc"[..]).unwrap();
        assert_eq!((r, n), (d, 3));
    }

    #[test]
    fn the_parallel_hash_equals_the_inline_one_at_every_block_boundary() {
        let data: Vec<u8> = (0..3 * BLOCK + 5).map(|i| (i % 253) as u8).collect();
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5] {
            let mut parallel = ParallelSha256::new();
            // Pieces of odd sizes, as reads return them.
            for piece in data[..len].chunks(7919) {
                parallel.update(piece);
            }
            assert_eq!(
                parallel.finish().unwrap(),
                (Sha256Digest::of(&data[..len]), len as u64)
            );
        }
        let mut reader = ParallelHashingReader::new(&data[..]);
        io::copy(&mut reader, &mut io::sink()).unwrap();
        assert_eq!(
            reader.finish().unwrap(),
            (Sha256Digest::of(&data), data.len() as u64)
        );
    }
}
