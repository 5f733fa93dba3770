//! The backup steps, one folder per apply below the backup folder
//! (docs/SITE.md, "Backup folders"). Each copy is made twice: once while
//! the service runs, and brought up to date after the stop
//! ([`crate::steps::precopy`]).
//!
//! - `databases/NAME.sqlite`: each SQLite database file, its WAL folded in
//!   first and copied under SQLite's EXCLUSIVE lock, then checked with
//!   `PRAGMA integrity_check`;
//! - `raft/`: the Raft data directory, with a SHA-256 per file;
//! - `config/N-NAME`: config files, with SHA-256;
//! - `installed/N-NAME`: each binary or file the apply replaces;
//! - `backup.json`: the list of all of the above, written last. A backup
//!   without it is incomplete and is never restored from.
//!
//! Each copy is hashed as it is written; every restore checks the copy's
//! hash before it replaces anything.

use std::collections::HashSet;
use std::io::{self, BufReader, BufWriter};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_formats::digest::HashingReader;
use airlock_formats::durable::{create_private_dir, sync_dir, write_atomic, write_bytes_atomic};
use airlock_formats::Sha256Digest;
use fs_err::File;
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::error::StepError;
use crate::steps::precopy::{self, PreCopies, Synced};

/// Name of the file that completes a backup.
pub const BACKUP_MANIFEST: &str = "backup.json";

/// What a complete backup holds (`backup.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupManifest {
    /// Always `airlock-backup/1`.
    pub format: String,
    /// When it was taken, Unix seconds.
    pub created_at: i64,
    /// Version that was running.
    pub from_version: String,
    /// Version being applied.
    pub to_version: String,
    /// Bundle file name.
    pub bundle: String,
    /// SQLite databases.
    pub databases: Vec<DatabaseRecord>,
    /// The Raft data directory, if the site has one.
    pub raft: Option<TreeRecord>,
    /// Config files.
    pub config_files: Vec<FileRecord>,
    /// Binaries and files the apply replaces.
    pub installed: Vec<FileRecord>,
    /// Trees the apply replaced, moved here by its commit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trees: Vec<crate::steps::tree::TreeBackup>,
}

/// A backed-up database.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DatabaseRecord {
    /// Name in the site profile.
    pub name: String,
    /// The live database file.
    pub source: PathBuf,
    /// Whether it existed; if not, restoring removes it.
    pub existed: bool,
    /// Copy, relative to the backup folder.
    pub file: Option<String>,
    /// SHA-256 of the copy.
    pub sha256: Option<Sha256Digest>,
    /// Size of the copy, in bytes.
    pub size: u64,
}

/// A backed-up file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    /// The live file.
    pub source: PathBuf,
    /// Copy, relative to the backup folder; `None` when the file did not exist
    /// (restoring removes it).
    pub file: Option<String>,
    /// SHA-256 of the copy.
    pub sha256: Option<Sha256Digest>,
    /// Size, in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
}

/// A backed-up folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TreeRecord {
    /// The live folder.
    pub source: PathBuf,
    /// Copy, relative to the backup folder.
    pub dir: String,
    /// Sub-folders, relative, parents first.
    pub dirs: Vec<String>,
    /// Files, relative, with their SHA-256.
    pub files: Vec<TreeFile>,
}

/// A file in a backed-up folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TreeFile {
    /// Path relative to the folder.
    pub path: String,
    /// SHA-256.
    pub sha256: Sha256Digest,
    /// Size, in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
}

/// Copies `src` to `dst` and returns the SHA-256 and size of what it
/// wrote; fsyncs `dst`.
///
/// A file under [`COPY_IN_KERNEL_FROM`] is read once through a buffer and
/// hashed as it goes. A larger one is copied inside the kernel
/// (`std::io::copy` between files is `copy_file_range(2)` on Linux), one
/// piece at a time, while a thread hashes each piece read back from `dst`:
/// the hash is of the copy, never of a live file that may change between
/// two reads.
///
/// # Errors
/// [`StepError::Io`] naming the file.
pub fn copy_file(src: &Path, dst: &Path, mode: u32) -> Result<(Sha256Digest, u64), StepError> {
    let digest = copy_file_unsynced(src, dst, mode)?;
    File::open(dst)?.sync_all()?;
    Ok(digest)
}

/// [`copy_file`] without its fsync: for a caller that copies many files and
/// fsyncs them all at the end ([`sync_files`]), so the disk writes the
/// first while the next ones are copied.
///
/// # Errors
/// [`StepError::Io`] naming the file.
pub fn copy_file_unsynced(
    src: &Path,
    dst: &Path,
    mode: u32,
) -> Result<(Sha256Digest, u64), StepError> {
    let input = File::open(src)?;
    let large = input.metadata()?.len() >= COPY_IN_KERNEL_FROM;
    let (digest, out) = if large {
        let out = fs_err::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dst)?;
        let digest = copy_in_kernel(&input, &out).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{e}: copying `{}` to `{}`", src.display(), dst.display()),
            )
        })?;
        (digest, out)
    } else {
        let mut hashing = HashingReader::new(BufReader::with_capacity(1 << 20, input));
        let out = File::create(dst)?;
        let mut writer = BufWriter::with_capacity(1 << 20, out);
        count_copied(io::copy(&mut hashing, &mut writer)?);
        (
            hashing.finish(),
            writer.into_inner().map_err(|e| e.into_error())?,
        )
    };
    out.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(digest)
}

/// Fsyncs each of `files`, then each of `dirs` (their folders).
///
/// # Errors
/// [`StepError::Io`] naming the first file or folder that fails.
pub fn sync_files(files: &[PathBuf], dirs: &[PathBuf]) -> Result<(), StepError> {
    for file in files {
        File::open(file)?.sync_all()?;
    }
    for dir in dirs {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Bytes the backup's copies wrote in this process, for progress bars.
static COPIED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes [`copy_file`] and [`copy_file_unsynced`] have copied in this
/// process so far (progress bars read it; nothing else depends on it).
pub fn copied_bytes() -> u64 {
    COPIED.load(std::sync::atomic::Ordering::Relaxed)
}

fn count_copied(n: u64) {
    COPIED.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

/// Files from this size on are copied inside the kernel by [`copy_file`]
/// (4 MiB).
const COPY_IN_KERNEL_FROM: u64 = 4 << 20;

/// Bytes [`copy_in_kernel`] copies before the hash thread reads them back
/// (8 MiB).
const COPY_PIECE: u64 = 8 << 20;

/// Copies all of `input` from its start to `out` (empty, opened for reading
/// too) piece by piece inside the kernel; a thread hashes each piece read
/// back from `out`. Returns the SHA-256 and size of `out`.
fn copy_in_kernel(input: &File, out: &File) -> io::Result<(Sha256Digest, u64)> {
    use sha2::{Digest as _, Sha256};
    use std::io::Read as _;
    use std::os::unix::fs::FileExt as _;

    let copy = out.file();
    std::thread::scope(|scope| {
        let (copied, pieces) = std::sync::mpsc::channel::<u64>();
        let hashing = scope.spawn(move || -> io::Result<(Sha256Digest, u64)> {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut offset = 0u64;
            for end in pieces {
                while offset < end {
                    let want = (end - offset).min(buf.len() as u64) as usize;
                    copy.read_exact_at(&mut buf[..want], offset)?;
                    hasher.update(&buf[..want]);
                    offset += want as u64;
                }
            }
            Ok((Sha256Digest(hasher.finalize().into()), offset))
        });
        let from = input.file();
        let mut to = out.file();
        let mut end = 0u64;
        let copying = loop {
            match io::copy(&mut from.take(COPY_PIECE), &mut to) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    end += n;
                    count_copied(n);
                    // The hash thread stops only after the channel closes.
                    let _ = copied.send(end);
                }
                Err(e) => break Err(e),
            }
        };
        drop(copied);
        let hashed = hashing
            .join()
            .map_err(|_| io::Error::other("the SHA-256 thread died"))?;
        copying?;
        hashed
    })
}

/// SHA-256 and size of a file.
///
/// # Errors
/// [`StepError::Io`] naming the file.
pub fn hash_file(path: &Path) -> Result<(Sha256Digest, u64), StepError> {
    let f = File::open(path)?;
    Ok(airlock_formats::digest::sha256_reader(
        BufReader::with_capacity(1 << 20, f),
    )?)
}

/// Checks that the copy at `path` still has the SHA-256 recorded for it.
fn check_copy(path: &Path, expected: Option<Sha256Digest>) -> Result<(), StepError> {
    if Some(hash_file(path)?.0) == expected {
        Ok(())
    } else {
        Err(StepError::BackupDamaged { path: path.into() })
    }
}

fn mode_of(path: &Path) -> u32 {
    fs_err::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o644)
}

/// Copies `src` into `dst` with the online backup API in a single step, so a
/// writer cannot make it start over forever (rusqlite's `Connection::backup`
/// steps 100 pages at a time and restarts when the source changes).
fn sqlite_copy(src: &Connection, dst: &mut Connection) -> rusqlite::Result<()> {
    let backup = Backup::new(src, dst)?;
    let mut waits = 0;
    loop {
        match backup.step(-1)? {
            StepResult::Done => return Ok(()),
            StepResult::Busy | StepResult::Locked if waits < 100 => {
                waits += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            StepResult::More | StepResult::Busy | StepResult::Locked => {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                    Some("the database stayed locked for 10 s".into()),
                ))
            }
            _ => {}
        }
    }
}

/// Waits until no process holds a lock on database `name` at `path`, for at
/// most `wait`: takes SQLite's EXCLUSIVE lock (`BEGIN EXCLUSIVE`, which
/// waits for every reader and writer of a rollback-journal database to let
/// go) and releases it at once. A database that does not exist is free.
///
/// # Errors
/// [`StepError::DatabaseInUse`] naming the database and the `secs` waited.
pub fn wait_unlocked(name: &str, path: &Path, wait: Duration, secs: u64) -> Result<(), StepError> {
    if !fs_err::exists(path)? {
        return Ok(());
    }
    let fail = |e: rusqlite::Error| StepError::Sqlite {
        what: format!("checking that nothing uses database `{name}`"),
        path: path.into(),
        source: e,
    };
    let conn = Connection::open(path).map_err(fail)?;
    conn.busy_timeout(wait.max(Duration::from_millis(100)))
        .map_err(fail)?;
    match conn.execute_batch("BEGIN EXCLUSIVE; ROLLBACK;") {
        Ok(()) => Ok(()),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
            Err(StepError::DatabaseInUse {
                name: name.into(),
                path: path.into(),
                secs,
            })
        }
        Err(e) => Err(fail(e)),
    }
}

/// Where the backup of database `name` lives, relative to the backup folder.
pub fn database_rel(name: &str) -> String {
    format!("databases/{name}.sqlite")
}

/// Copies the file of database `name` at `source` to
/// `BACKUP/databases/NAME.sqlite` while the service may still use it (the
/// copy may be torn; [`backup_database`] makes it exact after the stop).
/// Returns the bytes copied and what was seen of the file, if it exists.
///
/// # Errors
/// [`StepError::Io`] naming the file.
pub fn precopy_database(
    backup_dir: &Path,
    name: &str,
    source: &Path,
) -> Result<Option<(u64, Option<precopy::Seen>)>, StepError> {
    precopy_to(backup_dir, &database_rel(name), source, 0o600)
}

/// Backs up database `name` at `source` into `BACKUP/databases/NAME.sqlite`
/// once nothing else writes to it: folds its WAL into the file (`PRAGMA
/// wal_checkpoint(TRUNCATE)`), takes SQLite's EXCLUSIVE lock (which also
/// rolls back a hot journal), and brings the pre-copy up to date with
/// [`precopy::sync_file`], or copies the file whole when there is none.
/// The copy is then one self-contained database file; check it with
/// [`check_integrity`] before the backup is complete.
///
/// # Errors
/// [`StepError`] naming the database and file; [`StepError::DatabaseInUse`]
/// when another connection keeps the WAL from being folded in.
pub fn backup_database(
    backup_dir: &Path,
    name: &str,
    source: &Path,
    seen: &PreCopies,
) -> Result<(DatabaseRecord, Synced), StepError> {
    // Missing is a fact to record; unreadable is an error, never "missing".
    if !fs_err::exists(source)? {
        let record = DatabaseRecord {
            name: name.into(),
            source: source.into(),
            existed: false,
            file: None,
            sha256: None,
            size: 0,
        };
        return Ok((record, Synced::Copied));
    }
    let rel = database_rel(name);
    let dst = backup_dir.join(&rel);
    create_private_dir(&backup_dir.join("databases"))?;
    let fail = |e: rusqlite::Error| StepError::Sqlite {
        what: format!("backing up database `{name}` ({}) into", source.display()),
        path: dst.clone(),
        source: e,
    };
    let conn =
        Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(fail)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(fail)?;
    // SQLite docs (pragma wal_checkpoint): the first column is 1 when a
    // reader or writer kept the checkpoint from completing; a database not
    // in WAL mode answers 0.
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .map_err(fail)?;
    if busy != 0 {
        return Err(StepError::DatabaseInUse {
            name: name.into(),
            path: source.into(),
            secs: 10,
        });
    }
    conn.execute_batch("BEGIN EXCLUSIVE").map_err(fail)?;
    let synced = precopy::sync_file(source, &dst, 0o600, seen.get(source));
    let _ = conn.execute_batch("ROLLBACK");
    drop(conn);
    let (sha256, size, how) = synced?;
    let record = DatabaseRecord {
        name: name.into(),
        source: source.into(),
        existed: true,
        file: Some(rel),
        sha256: Some(sha256),
        size,
    };
    Ok((record, how))
}

/// Runs `PRAGMA integrity_check` on the copy of database `name` at `path`
/// (SQLite docs: it returns the single row `ok` when no problem is found).
///
/// # Errors
/// [`StepError::IntegrityCheck`] with what SQLite reported.
pub fn check_integrity(name: &str, path: &Path) -> Result<(), StepError> {
    let fail = |source: rusqlite::Error| StepError::Sqlite {
        what: format!("checking the backup of database `{name}`"),
        path: path.into(),
        source,
    };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(fail)?;
    let mut stmt = conn.prepare("PRAGMA integrity_check").map_err(fail)?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(Iterator::collect)
        .map_err(fail)?;
    if rows == ["ok"] {
        Ok(())
    } else {
        Err(StepError::IntegrityCheck {
            name: name.into(),
            path: path.into(),
            problems: rows.join("; "),
        })
    }
}

/// Restores database `record` from `backup_dir` into its live file with the
/// backup API (which handles the live file's journal or WAL correctly), after
/// checking the copy's SHA-256. Page size and journal mode come back with
/// the copy, whatever a migration changed them to.
///
/// # Errors
/// [`StepError`] naming the database and files.
pub fn restore_database(backup_dir: &Path, record: &DatabaseRecord) -> Result<(), StepError> {
    let Some(rel) = &record.file else {
        return remove_database(&record.source);
    };
    let copy = backup_dir.join(rel);
    let fail = |source: rusqlite::Error| StepError::Sqlite {
        what: format!(
            "restoring database `{}` from `{}` into",
            record.name,
            copy.display()
        ),
        path: record.source.clone(),
        source,
    };
    check_copy(&copy, record.sha256)?;
    let src = Connection::open_with_flags(&copy, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(fail)?;
    let mut dst = Connection::open(&record.source).map_err(fail)?;
    dst.busy_timeout(Duration::from_secs(10)).map_err(fail)?;
    // A migration run without a transaction may have put the live file in
    // WAL mode, where the backup API cannot change its page size (SQLite
    // answers "attempt to write a readonly database"). In rollback-journal
    // mode it can; the copy's header then brings back the journal mode the
    // database had before the apply.
    dst.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
        .map_err(fail)?;
    sqlite_copy(&src, &mut dst).map_err(fail)?;
    // Fold any WAL into the main file so the restored content is in one place.
    let _ = dst.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    drop(dst);
    File::open(&record.source)?.sync_all()?;
    Ok(())
}

/// Removes a database file that did not exist before the apply, with its
/// `-wal`, `-shm` and `-journal` files.
///
/// # Errors
/// [`StepError::Io`] naming the file that could not be removed.
pub fn remove_database(path: &Path) -> Result<(), StepError> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.to_owned().into_os_string();
        p.push(suffix);
        remove_if_present(Path::new(&p))?;
    }
    Ok(())
}

/// Removes a file the apply created; a file already gone is fine.
///
/// # Errors
/// [`StepError::Io`] naming the file.
pub fn remove_new_file(path: &Path) -> Result<(), StepError> {
    remove_if_present(path)
}

fn remove_if_present(path: &Path) -> Result<(), StepError> {
    match fs_err::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Copies the folder `source` into `BACKUP/NAME` while the service may
/// still write to it; returns what was seen of each file it can trust
/// (see [`crate::steps::precopy`]), and the bytes copied.
///
/// # Errors
/// [`StepError`] naming the file; links and special files are refused.
pub fn precopy_tree(
    backup_dir: &Path,
    name: &str,
    source: &Path,
) -> Result<(PreCopies, u64), StepError> {
    let root = backup_dir.join(name);
    create_private_dir(&root)?;
    let mut seen = PreCopies::new();
    let mut bytes = 0;
    // Every copy is fsynced at the end, at once: the disk writes each
    // while the next ones are copied, as `cp -a` and one `sync` do.
    let (mut copied, mut dirs) = (Vec::new(), vec![root.clone()]);
    for entry in walkdir::WalkDir::new(source)
        .min_depth(1)
        .sort_by_file_name()
    {
        let entry = entry.map_err(io::Error::from)?;
        let rel = relative(entry.path(), source)?;
        let ft = entry.file_type();
        let dst = root.join(&rel);
        if ft.is_dir() {
            create_private_dir(&dst)?;
            dirs.push(dst);
        } else if ft.is_file() {
            let (size, trusted) = precopy::precopy_file(
                entry.path(),
                &dst,
                mode_of(entry.path()),
                precopy::Durable::Later,
            )?;
            seen.extend(trusted.map(|s| (entry.path().to_owned(), s)));
            bytes += size;
            copied.push(dst);
        } else {
            return Err(StepError::NotRegular {
                path: entry.path().into(),
            });
        }
    }
    sync_files(&copied, &dirs)?;
    Ok((seen, bytes))
}

/// How the copies of a folder were brought up to date.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeSync {
    /// Files as the pre-copy saw them.
    pub unchanged: usize,
    /// Files compared with their pre-copy.
    pub compared: usize,
    /// Bytes rewritten in them.
    pub written: u64,
    /// Files copied whole (no pre-copy).
    pub copied: usize,
    /// Copies removed: their file is gone.
    pub removed: usize,
}

impl std::fmt::Display for TreeSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} unchanged since the pre-copy, {} compared ({} rewritten), {} copied, {} removed",
            self.unchanged,
            self.compared,
            airlock_formats::shown::bytes(self.written),
            self.copied,
            self.removed
        )
    }
}

/// Makes `BACKUP/NAME` an exact copy of the folder `source`, hashing each
/// file: what [`precopy_tree`] copied is brought up to date, anything else
/// copied, and copies of files that are gone removed.
///
/// # Errors
/// [`StepError`] naming the file; links and special files are refused.
pub fn backup_tree(
    backup_dir: &Path,
    name: &str,
    source: &Path,
    seen: &PreCopies,
) -> Result<(TreeRecord, TreeSync), StepError> {
    let root = backup_dir.join(name);
    create_private_dir(&root)?;
    let mut record = TreeRecord {
        source: source.into(),
        dir: name.into(),
        dirs: Vec::new(),
        files: Vec::new(),
    };
    let mut sync = TreeSync::default();
    for entry in walkdir::WalkDir::new(source)
        .min_depth(1)
        .sort_by_file_name()
    {
        let entry = entry.map_err(io::Error::from)?;
        let rel = relative(entry.path(), source)?;
        let ft = entry.file_type();
        let dst = root.join(&rel);
        if ft.is_dir() {
            if fs_err::symlink_metadata(&dst).is_ok_and(|m| !m.is_dir()) {
                fs_err::remove_file(&dst)?;
            }
            create_private_dir(&dst)?;
            record.dirs.push(rel);
        } else if ft.is_file() {
            if fs_err::symlink_metadata(&dst).is_ok_and(|m| m.is_dir()) {
                fs_err::remove_dir_all(&dst)?;
            }
            let mode = mode_of(entry.path());
            let (sha256, size, how) =
                precopy::sync_file(entry.path(), &dst, mode, seen.get(entry.path()))?;
            match how {
                Synced::Unchanged => sync.unchanged += 1,
                Synced::Compared { written } => {
                    sync.compared += 1;
                    sync.written += written;
                }
                Synced::Copied => sync.copied += 1,
            }
            record.files.push(TreeFile {
                path: rel,
                sha256,
                size,
                mode,
            });
        } else {
            return Err(StepError::NotRegular {
                path: entry.path().into(),
            });
        }
    }
    // Copies whose file is gone since the pre-copy.
    let keep: HashSet<&str> = record
        .files
        .iter()
        .map(|f| f.path.as_str())
        .chain(record.dirs.iter().map(String::as_str))
        .collect();
    let mut gone = Vec::new();
    for entry in walkdir::WalkDir::new(&root)
        .min_depth(1)
        .contents_first(true)
    {
        let entry = entry.map_err(io::Error::from)?;
        if !keep.contains(relative(entry.path(), &root)?.as_str()) {
            gone.push((entry.path().to_owned(), entry.file_type().is_dir()));
        }
    }
    for (path, dir) in gone {
        if dir {
            fs_err::remove_dir(&path)?;
        } else {
            fs_err::remove_file(&path)?;
            sync.removed += 1;
        }
    }
    for dir in record.dirs.iter().rev() {
        sync_dir(&root.join(dir))?;
    }
    sync_dir(&root)?;
    Ok((record, sync))
}

/// `path` below `root`, as text.
fn relative(path: &Path, root: &Path) -> Result<String, StepError> {
    path.strip_prefix(root)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|_| {
            StepError::Io(io::Error::other(format!(
                "`{}` is not below `{}`",
                path.display(),
                root.display()
            )))
        })
}

/// How a live folder differs from its backup.
#[derive(Debug, Default)]
pub struct TreeDiff {
    /// Files the backup does not have.
    pub extra: Vec<PathBuf>,
    /// Files of the backup that are missing or differ, by index into `TreeRecord::files`.
    pub changed: Vec<usize>,
}

impl TreeDiff {
    /// Number of files that differ.
    pub fn len(&self) -> usize {
        self.extra.len() + self.changed.len()
    }

    /// Whether the live folder equals the backup.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Compares the live folder of `record` with the hashes taken at backup time.
///
/// # Errors
/// [`StepError::Io`] naming the folder that could not be read.
pub fn diff_tree(record: &TreeRecord) -> Result<TreeDiff, StepError> {
    let mut diff = TreeDiff::default();
    if !fs_err::exists(&record.source)? {
        diff.changed = (0..record.files.len()).collect();
        return Ok(diff);
    }
    let keep: HashSet<&str> = record.files.iter().map(|f| f.path.as_str()).collect();
    for entry in walkdir::WalkDir::new(&record.source).min_depth(1) {
        let entry = entry.map_err(io::Error::from)?;
        if entry.file_type().is_dir() {
            continue;
        }
        if !keep.contains(relative(entry.path(), &record.source)?.as_str()) {
            diff.extra.push(entry.path().to_owned());
        }
    }
    for (i, file) in record.files.iter().enumerate() {
        let same = hash_file(&record.source.join(&file.path))
            .map(|(sha, _)| sha == file.sha256)
            .unwrap_or(false);
        if !same {
            diff.changed.push(i);
        }
    }
    Ok(diff)
}

/// Makes the live folder of `record` equal to its backup: changed and missing
/// files are copied back (each copy checked against its SHA-256 first), files
/// the backup does not have are removed. Returns how many files it touched.
///
/// # Errors
/// [`StepError`] naming the file; a damaged copy leaves the live folder untouched.
pub fn restore_tree(backup_dir: &Path, record: &TreeRecord) -> Result<usize, StepError> {
    let root = backup_dir.join(&record.dir);
    let diff = diff_tree(record)?;
    // Check every copy first, so a bad one leaves the live folder untouched.
    for &i in &diff.changed {
        let file = &record.files[i];
        check_copy(&root.join(&file.path), Some(file.sha256))?;
    }
    create_private_dir(&record.source)?;
    for dir in &record.dirs {
        create_private_dir(&record.source.join(dir))?;
    }
    for path in &diff.extra {
        fs_err::remove_file(path)?;
    }
    for &i in &diff.changed {
        let file = &record.files[i];
        let mut input = BufReader::new(File::open(root.join(&file.path))?);
        write_atomic(&record.source.join(&file.path), file.mode, |f| {
            io::copy(&mut input, f).map(|_| ())
        })?;
    }
    Ok(diff.len())
}

/// Where the backup of the `n`th file of `folder` (`config` or
/// `installed`) lives, relative to the backup folder: `FOLDER/N-NAME`
/// (docs/SITE.md, "Backup folders").
pub fn file_rel(folder: &str, n: usize, path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{folder}/{n}-{name}")
}

/// Copies a single file to `BACKUP/REL` while the service may still use it,
/// if it exists; returns the bytes copied and what was seen of it.
///
/// # Errors
/// [`StepError`] naming the file.
pub fn precopy_single(
    backup_dir: &Path,
    rel: &str,
    source: &Path,
) -> Result<Option<(u64, Option<precopy::Seen>)>, StepError> {
    precopy_to(backup_dir, rel, source, mode_of(source))
}

/// [`precopy::precopy_file`] of `source`, if it exists, to `BACKUP/REL` with `mode`.
fn precopy_to(
    backup_dir: &Path,
    rel: &str,
    source: &Path,
    mode: u32,
) -> Result<Option<(u64, Option<precopy::Seen>)>, StepError> {
    if !fs_err::exists(source)? {
        return Ok(None);
    }
    let dst = backup_dir.join(rel);
    if let Some(parent) = dst.parent() {
        create_private_dir(parent)?;
    }
    precopy::precopy_file(source, &dst, mode, precopy::Durable::Now).map(Some)
}

/// Copies a single file (a config file or a binary about to be replaced) to
/// `BACKUP/REL`, or records that it did not exist; a pre-copy there is
/// brought up to date.
///
/// # Errors
/// [`StepError`] naming the file.
pub fn backup_file(
    backup_dir: &Path,
    rel: &str,
    source: &Path,
    seen: &PreCopies,
) -> Result<FileRecord, StepError> {
    if !fs_err::exists(source)? {
        return Ok(FileRecord {
            source: source.into(),
            file: None,
            sha256: None,
            size: 0,
            mode: 0,
        });
    }
    let dst = backup_dir.join(rel);
    if let Some(parent) = dst.parent() {
        create_private_dir(parent)?;
    }
    let mode = mode_of(source);
    let (sha256, size, _) = precopy::sync_file(source, &dst, mode, seen.get(source))?;
    Ok(FileRecord {
        source: source.into(),
        file: Some(rel.into()),
        sha256: Some(sha256),
        size,
        mode,
    })
}

/// Puts a backed-up file back durably (after checking its copy), or removes
/// the live one when it did not exist before.
///
/// # Errors
/// [`StepError`] naming the file.
pub fn restore_file(backup_dir: &Path, record: &FileRecord) -> Result<(), StepError> {
    let Some(rel) = &record.file else {
        return remove_if_present(&record.source);
    };
    let copy = backup_dir.join(rel);
    check_copy(&copy, record.sha256)?;
    let mut input = File::open(&copy)?;
    write_atomic(&record.source, record.mode, |f| {
        io::copy(&mut input, f).map(|_| ())
    })?;
    Ok(())
}

/// Writes `backup.json` last, durably: from now on the backup is complete.
///
/// # Errors
/// [`StepError`] naming the file.
pub fn complete(backup_dir: &Path, manifest: &BackupManifest) -> Result<(), StepError> {
    let path = backup_dir.join(BACKUP_MANIFEST);
    let mut bytes =
        serde_json::to_vec_pretty(manifest).map_err(|source| StepError::BackupManifest {
            path: path.clone(),
            source,
        })?;
    bytes.push(b'\n');
    write_bytes_atomic(&path, 0o600, &bytes)?;
    sync_dir(backup_dir)?;
    Ok(())
}

/// Reads a complete backup's `backup.json`.
///
/// # Errors
/// [`StepError`] naming the file: missing (the backup is incomplete) or unreadable.
pub fn load(backup_dir: &Path) -> Result<BackupManifest, StepError> {
    let path = backup_dir.join(BACKUP_MANIFEST);
    let text = fs_err::read_to_string(&path)?;
    serde_json::from_str(&text).map_err(|source| StepError::BackupManifest { path, source })
}

/// Checks every copy in a complete backup against the SHA-256 recorded in
/// `backup.json`. Returns the damage found (none: the backup is intact): a
/// copy that differs or is missing.
///
/// # Errors
/// [`StepError::Io`] when a copy cannot be read for another reason (a
/// permission problem is not damage).
pub fn verify(backup_dir: &Path, manifest: &BackupManifest) -> Result<Vec<StepError>, StepError> {
    let mut problems = Vec::new();
    let mut failure = None;
    let mut check = |rel: &str, expected: Option<Sha256Digest>| match check_copy(
        &backup_dir.join(rel),
        expected,
    ) {
        Ok(()) => {}
        Err(e @ StepError::Io(_)) if e.io_kind() != Some(io::ErrorKind::NotFound) => {
            failure.get_or_insert(e);
        }
        Err(e) => problems.push(e),
    };
    for db in &manifest.databases {
        if let Some(rel) = &db.file {
            check(rel, db.sha256);
        }
    }
    for file in manifest.config_files.iter().chain(&manifest.installed) {
        if let Some(rel) = &file.file {
            check(rel, file.sha256);
        }
    }
    if let Some(raft) = &manifest.raft {
        for file in &raft.files {
            check(&format!("{}/{}", raft.dir, file.path), Some(file.sha256));
        }
    }
    for tree in &manifest.trees {
        for file in &tree.files {
            check(&format!("{}/{}", tree.dir, file.path), Some(file.sha256));
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(problems),
    }
}

/// A backup folder found below the backup folder.
#[derive(Debug, Clone)]
pub struct BackupInfo {
    /// The folder.
    pub dir: PathBuf,
    /// Its manifest, when complete.
    pub manifest: Option<BackupManifest>,
    /// Size of everything in it, in bytes.
    pub size: u64,
}

/// Backups below `root`, oldest first (names start with the Unix time); a
/// folder without `backup.json` is listed as incomplete.
///
/// # Errors
/// [`StepError`] when `root` or a `backup.json` exists but cannot be read
/// (a permission problem is not "no backups" nor "incomplete").
pub fn list(root: &Path) -> Result<Vec<BackupInfo>, StepError> {
    let entries = match fs_err::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let dir = entry.path();
        let manifest = match load(&dir) {
            Ok(m) => Some(m),
            Err(e) if e.io_kind() == Some(io::ErrorKind::NotFound) => None,
            Err(e) => return Err(e),
        };
        out.push(BackupInfo {
            manifest,
            size: super::stage::tree_size(&dir),
            dir,
        });
    }
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(out)
}

/// Removes complete backups beyond the newest `keep`, and incomplete ones;
/// never a folder in `protect` (the backup the `rollback` command would use,
/// the one being written). Returns the folders removed.
///
/// # Errors
/// [`StepError::Io`] naming the folder that could not be removed.
pub fn prune(root: &Path, keep: usize, protect: &[&Path]) -> Result<Vec<PathBuf>, StepError> {
    let all = list(root)?;
    // Compare real paths: the same folder may be spelled two ways.
    let real = |p: &Path| fs_err::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    let protected: Vec<PathBuf> = protect.iter().map(|p| real(p)).collect();
    let kept = |b: &BackupInfo| !protected.contains(&real(&b.dir));
    let complete: Vec<&BackupInfo> = all.iter().filter(|b| b.manifest.is_some()).collect();
    let mut remove: Vec<PathBuf> = complete
        .iter()
        .take(complete.len().saturating_sub(keep))
        .filter(|b| kept(b))
        .map(|b| b.dir.clone())
        .collect();
    remove.extend(
        all.iter()
            .filter(|b| b.manifest.is_none() && kept(b))
            .map(|b| b.dir.clone()),
    );
    for dir in &remove {
        fs_err::remove_dir_all(dir)?;
    }
    if !remove.is_empty() {
        sync_dir(root)?;
    }
    Ok(remove)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn a_copy_in_the_kernel_or_through_a_buffer_is_the_file_and_its_hash_is_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        // Under COPY_IN_KERNEL_FROM, at it, and across several COPY_PIECEs
        // with a short last one.
        for size in [
            0usize,
            5,
            (4 << 20) - 1,
            4 << 20,
            (2 * COPY_PIECE as usize) + 12_345,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i % 241) as u8).collect();
            let (src, dst) = (dir.path().join("live"), dir.path().join("copy"));
            fs::write(&src, &data).unwrap();
            // An old, longer copy is replaced whole.
            fs::write(&dst, vec![7u8; size + 100]).unwrap();
            let (sha, copied) = copy_file(&src, &dst, 0o600).unwrap();
            assert_eq!(
                (sha, copied),
                (Sha256Digest::of(&data), size as u64),
                "{size}"
            );
            assert_eq!(fs::read(&dst).unwrap(), data, "{size}");
            assert_eq!(
                fs::metadata(&dst).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn database_backup_and_restore_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);",
        )
        .unwrap();
        let backup_dir = dir.path().join("b");
        let (record, _) = backup_database(&backup_dir, "main", &db, &PreCopies::new()).unwrap();
        check_integrity("main", &backup_dir.join(database_rel("main"))).unwrap();
        conn.execute_batch("INSERT INTO t VALUES (3); CREATE TABLE u(y);")
            .unwrap();
        drop(conn);
        restore_database(&backup_dir, &record).unwrap();
        let conn = Connection::open(&db).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        assert!(conn.prepare("SELECT * FROM u").is_err());
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(conn);

        // A migration without a transaction left it in another page size
        // and journal mode: both come back with the copy.
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = DELETE; PRAGMA page_size = 8192; VACUUM; PRAGMA journal_mode = WAL; INSERT INTO t VALUES (4);",
        )
        .unwrap();
        drop(conn);
        restore_database(&backup_dir, &record).unwrap();
        let conn = Connection::open(&db).unwrap();
        let (n, page, mode): (i64, i64, String) = (
            conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap(),
            conn.query_row("PRAGMA page_size", [], |r| r.get(0))
                .unwrap(),
            conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap(),
        );
        assert_eq!((n, page, mode.as_str()), (2, 4096, "wal"));
    }

    #[test]
    fn a_database_written_after_its_pre_copy_is_backed_up_with_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t(x); INSERT INTO t VALUES (zeroblob(100000));",
        )
        .unwrap();
        let backup_dir = dir.path().join("b");
        precopy_database(&backup_dir, "main", &db).unwrap().unwrap();
        // Writes after the pre-copy, still in the WAL when the backup runs.
        conn.execute_batch("INSERT INTO t VALUES (2); UPDATE t SET x = 3 WHERE rowid = 1;")
            .unwrap();
        drop(conn);
        let (record, how) = backup_database(&backup_dir, "main", &db, &PreCopies::new()).unwrap();
        assert!(matches!(how, Synced::Compared { .. }), "{how:?}");
        let copy = backup_dir.join(database_rel("main"));
        check_integrity("main", &copy).unwrap();
        assert_eq!(record.sha256, Some(hash_file(&copy).unwrap().0));
        let conn = Connection::open_with_flags(&copy, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let rows: Vec<i64> = conn
            .prepare("SELECT x FROM t ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [3, 2]);
    }

    #[test]
    fn a_tree_changed_after_its_pre_copy_is_backed_up_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("raft");
        fs::create_dir_all(live.join("member/wal")).unwrap();
        fs::create_dir_all(live.join("member/old")).unwrap();
        fs::write(live.join("member/wal/0.wal"), b"entries").unwrap();
        fs::write(live.join("member/old/gone"), b"x").unwrap();
        fs::write(live.join("member/same"), b"kept").unwrap();
        let backup_dir = dir.path().join("b");
        precopy_tree(&backup_dir, "raft", &live).unwrap();
        fs::write(live.join("member/wal/0.wal"), b"entries and more").unwrap();
        fs::write(live.join("member/wal/1.wal"), b"new").unwrap();
        fs::remove_dir_all(live.join("member/old")).unwrap();
        let (record, sync) = backup_tree(&backup_dir, "raft", &live, &PreCopies::new()).unwrap();
        assert_eq!((sync.copied, sync.removed), (1, 1), "{sync}");
        let copy = backup_dir.join("raft");
        assert_eq!(
            fs::read(copy.join("member/wal/0.wal")).unwrap(),
            b"entries and more"
        );
        assert_eq!(fs::read(copy.join("member/wal/1.wal")).unwrap(), b"new");
        assert!(!copy.join("member/old").exists());
        assert_eq!(record.files.len(), 3);
        assert!(diff_tree(&record).unwrap().is_empty());
    }

    #[test]
    fn tree_backup_restores_changes_and_removes_extras() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("raft");
        fs::create_dir_all(live.join("member/wal")).unwrap();
        fs::write(live.join("member/wal/0.wal"), b"entries").unwrap();
        let backup_dir = dir.path().join("b");
        let (record, _) = backup_tree(&backup_dir, "raft", &live, &PreCopies::new()).unwrap();
        fs::write(live.join("member/wal/0.wal"), b"changed").unwrap();
        fs::write(live.join("member/wal/1.wal"), b"new").unwrap();
        assert_eq!(restore_tree(&backup_dir, &record).unwrap(), 2);
        assert_eq!(fs::read(live.join("member/wal/0.wal")).unwrap(), b"entries");
        assert!(!live.join("member/wal/1.wal").exists());
    }

    #[test]
    fn a_damaged_copy_is_told_apart_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app.conf");
        fs::write(&live, b"v1").unwrap();
        let backup_dir = dir.path().join("b");
        let record =
            backup_file(&backup_dir, "config/0-app.conf", &live, &PreCopies::new()).unwrap();
        fs::write(&live, b"v2").unwrap();
        fs::write(backup_dir.join("config/0-app.conf"), b"xx").unwrap();
        let err = restore_file(&backup_dir, &record).unwrap_err();
        assert!(matches!(err, StepError::BackupDamaged { .. }), "{err}");
        assert_eq!(fs::read(&live).unwrap(), b"v2");
        // A copy that is gone is an I/O error with its path and kind.
        fs::remove_file(backup_dir.join("config/0-app.conf")).unwrap();
        let err = restore_file(&backup_dir, &record).unwrap_err();
        assert_eq!(err.io_kind(), Some(io::ErrorKind::NotFound));
        assert!(err.to_string().contains("config/0-app.conf"), "{err}");
    }
}
