//! Backups in two passes, so the service is down only for what changed
//! (docs/SITE.md, "Backups while the service runs"):
//!
//! 1. Before the stop, the pre-copy steps copy every file a backup step will
//!    copy (database files, the Raft folder, config files, installed files)
//!    to its place in the backup folder, and remember what they saw of each
//!    live file: device, inode, size, modification and change times (ns),
//!    and the SHA-256 of what they copied.
//! 2. After the stop, the backup steps [`sync_file`] each live file onto its
//!    pre-copy. A file whose device, inode, size and times are still those
//!    seen is taken as unchanged, as git's index and rsync's quick check do.
//!    Any other file is compared with its pre-copy in 1 MiB chunks, and only
//!    the chunks that differ are written. Its SHA-256 is taken from the live
//!    bytes as they are read. Either way the copy ends equal to the live file.
//!
//! A file is remembered only when nothing changed it while it was copied and
//! its change time is at least [`RACY_SECS`] older than the moment its copy
//! began. File times come from a coarse kernel clock, so a write in the same
//! tick as the last one could leave them unchanged; such "racily clean"
//! files (git's term) are compared by content after the stop.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use airlock_formats::digest::FileHashing;
use airlock_formats::Sha256Digest;
use fs_err::File;

use crate::error::StepError;
use crate::steps::backup::{copy_file, copy_file_unsynced};

/// How much older than the start of its copy a file's change time must be
/// for the pre-copy to remember it (see the module docs), in seconds.
pub const RACY_SECS: i64 = 2;

/// Chunk size of the comparison after the stop, in bytes.
const CHUNK: usize = 1 << 20;

/// What a pre-copy saw of a live file it copied while nothing changed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    /// SHA-256 of the bytes copied.
    pub sha256: Sha256Digest,
}

impl Seen {
    fn matches(&self, meta: &std::fs::Metadata) -> bool {
        let now = Self::stat(meta, self.sha256);
        now == *self
    }

    fn stat(meta: &std::fs::Metadata, sha256: Sha256Digest) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            sha256,
        }
    }
}

/// The live files the pre-copy steps of one apply remembered, by path.
pub type PreCopies = HashMap<PathBuf, Seen>;

/// Copies the live file `src` to `dst` (fsynced, with `mode`) while the
/// service may still write to it. Returns the bytes copied and what it saw
/// of `src` when the copy can be trusted without reading it again (see the
/// module docs).
///
/// # Errors
/// [`StepError::Io`] naming the file.
pub fn precopy_file(
    src: &Path,
    dst: &Path,
    mode: u32,
    durable: Durable,
) -> Result<(u64, Option<Seen>), StepError> {
    let began = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
    let before = fs_err::metadata(src)?;
    let (sha256, size) = match durable {
        Durable::Now => copy_file(src, dst, mode)?,
        Durable::Later => copy_file_unsynced(src, dst, mode)?,
    };
    let after = fs_err::metadata(src)?;
    let seen = Seen::stat(&before, sha256);
    let racy = seen.ctime_ns > began - i128::from(RACY_SECS) * 1_000_000_000;
    let trusted = seen == Seen::stat(&after, sha256) && seen.size == size && !racy;
    Ok((size, trusted.then_some(seen)))
}

/// When a pre-copy reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    /// Fsynced before [`precopy_file`] returns.
    Now,
    /// The caller fsyncs it, with others ([`crate::steps::backup::sync_files`]).
    Later,
}

/// How [`sync_file`] made a copy equal to its live file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// The live file is as the pre-copy saw it: nothing was read.
    Unchanged,
    /// Compared with the pre-copy; this many bytes were written.
    Compared {
        /// Bytes rewritten in the copy.
        written: u64,
    },
    /// There was no pre-copy: copied whole.
    Copied,
}

impl Synced {
    /// How, for people.
    pub fn describe(self) -> String {
        match self {
            Self::Unchanged => "unchanged since the pre-copy".into(),
            Self::Compared { written } => {
                format!(
                    "compared with the pre-copy, {} rewritten",
                    airlock_formats::shown::bytes(written)
                )
            }
            Self::Copied => "copied whole".into(),
        }
    }
}

/// Makes `dst` an exact, fsynced copy of `src` with `mode`, using the
/// pre-copy at `dst` and what it saw of `src` (see the module docs).
/// Returns the copy's SHA-256, its size in bytes and how it was made.
///
/// # Errors
/// [`StepError::Io`] naming the file.
pub fn sync_file(
    src: &Path,
    dst: &Path,
    mode: u32,
    seen: Option<&Seen>,
) -> Result<(Sha256Digest, u64, Synced), StepError> {
    let meta = fs_err::metadata(src)?;
    let copy = match fs_err::metadata(dst) {
        Ok(m) if m.is_file() => Some(m),
        Ok(_) => None,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let Some(copy) = copy else {
        let (sha256, size) = copy_file(src, dst, mode)?;
        return Ok((sha256, size, Synced::Copied));
    };
    if let Some(seen) = seen.filter(|s| s.matches(&meta) && copy.len() == s.size) {
        if copy.permissions().mode() & 0o7777 != mode {
            fs_err::set_permissions(dst, std::fs::Permissions::from_mode(mode))?;
        }
        return Ok((seen.sha256, seen.size, Synced::Unchanged));
    }
    // A large file is hashed on a thread beside the comparison: this runs
    // while the service is down.
    let source = File::open(src)?;
    let mut input = FileHashing::new(source, meta.len());
    let out = fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dst)?;
    let (mut live, mut old) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut offset, mut written) = (0u64, 0u64);
    loop {
        let n = read_full(&mut input, &mut live)?;
        if n == 0 {
            break;
        }
        let chunk = &live[..n];
        let had = read_full_at(&out, &mut old[..n], offset)?;
        if had != n || old[..n] != *chunk {
            out.file().write_all_at(chunk, offset).map_err(|e| {
                io::Error::new(e.kind(), format!("{e}: writing `{}`", dst.display()))
            })?;
            written += n as u64;
        }
        offset += n as u64;
    }
    if copy.len() != offset {
        out.set_len(offset)?;
    }
    out.set_permissions(std::fs::Permissions::from_mode(mode))?;
    out.sync_all()?;
    let (sha256, _) = input.finish()?;
    Ok((sha256, offset, Synced::Compared { written }))
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// [`read_full`] at `offset`, without moving the file's position.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.file().read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn an_unchanged_file_is_not_read_and_a_changed_one_is_rewritten_where_it_differs() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("live"), dir.path().join("copy"));
        // Over PARALLEL_HASH_FROM: hashed on a thread (b"short" below: inline).
        let data: Vec<u8> = (0..5 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        assert!(data.len() as u64 >= airlock_formats::digest::PARALLEL_HASH_FROM);
        fs::write(&src, &data).unwrap();
        // A file written just now is racily clean: not remembered.
        assert_eq!(
            precopy_file(&src, &dst, 0o644, Durable::Now).unwrap().1,
            None
        );
        let (sha, size, how) = sync_file(&src, &dst, 0o644, None).unwrap();
        assert_eq!((sha, size), (Sha256Digest::of(&data), data.len() as u64));
        assert_eq!(how, Synced::Compared { written: 0 });

        // One byte in the second chunk changes, and the file grows.
        let mut changed = data.clone();
        changed[CHUNK + 5] ^= 0xff;
        changed.extend_from_slice(b"tail");
        fs::write(&src, &changed).unwrap();
        let (sha, size, how) = sync_file(&src, &dst, 0o600, None).unwrap();
        assert_eq!(
            (sha, size),
            (Sha256Digest::of(&changed), changed.len() as u64)
        );
        assert_eq!(
            how,
            Synced::Compared {
                written: CHUNK as u64 + 21
            }
        );
        assert_eq!(fs::read(&dst).unwrap(), changed);
        assert_eq!(
            fs::metadata(&dst).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // It shrinks.
        fs::write(&src, b"short").unwrap();
        sync_file(&src, &dst, 0o600, None).unwrap();
        assert_eq!(fs::read(&dst).unwrap(), b"short");

        // No pre-copy: copied whole.
        fs::remove_file(&dst).unwrap();
        let (_, _, how) = sync_file(&src, &dst, 0o600, None).unwrap();
        assert_eq!(how, Synced::Copied);
    }

    #[test]
    fn a_remembered_file_is_trusted_until_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("live"), dir.path().join("copy"));
        fs::write(&src, b"entries").unwrap();
        // Its change time is now, so a pre-copy would not remember it: take
        // what a pre-copy of an older file would have seen.
        let meta = fs::metadata(&src).unwrap();
        copy_file(&src, &dst, 0o644).unwrap();
        let seen = Seen::stat(&meta, Sha256Digest::of(b"entries"));
        let (sha, _, how) = sync_file(&src, &dst, 0o644, Some(&seen)).unwrap();
        assert_eq!(
            (sha, how),
            (Sha256Digest::of(b"entries"), Synced::Unchanged)
        );
        // A write of the same size changes the times: compared, rewritten.
        fs::write(&src, b"ENTRIES").unwrap();
        let (sha, _, how) = sync_file(&src, &dst, 0o644, Some(&seen)).unwrap();
        assert_eq!(sha, Sha256Digest::of(b"ENTRIES"));
        assert_eq!(how, Synced::Compared { written: 7 });
        assert_eq!(fs::read(&dst).unwrap(), b"ENTRIES");
    }
}
