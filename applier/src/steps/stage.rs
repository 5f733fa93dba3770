//! The stage step: stream the payload into a private staging folder, and
//! what installs by rename beside its target (`.NAME.airlock-ID`, see
//! `steps::install` and `steps::tree`). A file is written as `PATH.partial`
//! and renamed to `PATH` only after its size and SHA-256 matched the signed
//! manifest, so nothing unverified is ever kept under its real name; an
//! installed file gets its permission bits only then.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use airlock_formats::durable::create_private_dir;
use airlock_formats::{BundleError, BundlePath, FileEntry, PayloadSink, Role};
use fs_err::os::unix::fs::OpenOptionsExt as _;
use fs_err::File;

use crate::error::StepError;

/// Writes verified payload files below a staging folder.
pub struct StageSink {
    root: PathBuf,
    routes: BTreeMap<BundlePath, PathBuf>,
    on_bytes: Box<dyn FnMut(u64)>,
}

impl StageSink {
    /// Creates the staging folder `root` (mode 0700), removing an old one.
    ///
    /// # Errors
    /// [`StepError`] naming the folder.
    pub fn create(root: &Path, on_bytes: Box<dyn FnMut(u64)>) -> Result<Self, StepError> {
        if fs_err::exists(root)? {
            fs_err::remove_dir_all(root)?;
        }
        create_private_dir(root)?;
        Ok(Self {
            root: root.to_owned(),
            routes: BTreeMap::new(),
            on_bytes,
        })
    }

    /// Writes the payload file `path` to `to` instead of below the staging
    /// folder.
    pub fn route(&mut self, path: BundlePath, to: PathBuf) {
        self.routes.insert(path, to);
    }

    fn target(&self, entry: &FileEntry) -> PathBuf {
        self.routes
            .get(&entry.path)
            .cloned()
            .unwrap_or_else(|| entry.path.join_to(&self.root))
    }

    /// The staging folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn partial(&self, entry: &FileEntry) -> PathBuf {
        let mut p = self.target(entry).into_os_string();
        p.push(".partial");
        PathBuf::from(p)
    }
}

impl PayloadSink for StageSink {
    fn write_file(
        &mut self,
        entry: &FileEntry,
        contents: &mut dyn Read,
    ) -> Result<(), BundleError> {
        let partial = self.partial(entry);
        let ctx = || format!("staging `{}` to `{}`", entry.path, partial.display());
        if let Some(parent) = partial.parent() {
            create_private_dir(parent).map_err(|e| BundleError::io(ctx())(e.source))?;
        }
        // Hook scripts must be executable by their owner; nothing else needs to be.
        let mode = if entry.role == Role::Script {
            0o700
        } else {
            0o600
        };
        let file = fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&partial)
            .map_err(BundleError::io(ctx()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = contents
                .read(&mut buf)
                .map_err(|e| airlock_formats::payload::unwrap_io(&ctx(), e))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(BundleError::io(ctx()))?;
            (self.on_bytes)(n as u64);
        }
        let file = out
            .into_inner()
            .map_err(|e| BundleError::io(ctx())(e.into_error()))?;
        file.sync_all().map_err(BundleError::io(ctx()))?;
        Ok(())
    }

    fn verified(&mut self, entry: &FileEntry) -> Result<(), BundleError> {
        let target = self.target(entry);
        let ctx = || format!("staging `{}`", target.display());
        let partial = self.partial(entry);
        if self.routes.contains_key(&entry.path) || entry.role == Role::Tree {
            fs_err::set_permissions(&partial, std::fs::Permissions::from_mode(entry.mode))
                .map_err(BundleError::io(ctx()))?;
        }
        fs_err::rename(partial, &target).map_err(BundleError::io(ctx()))
    }
}

/// Bytes available to an unprivileged writer on the filesystem holding `path`
/// (or its nearest existing ancestor).
///
/// # Errors
/// I/O errors of statvfs(3).
pub fn available_space(path: &Path) -> io::Result<u64> {
    let mut probe = path;
    while !probe.exists() {
        probe = match probe.parent() {
            Some(p) => p,
            None => break,
        };
    }
    fs4::available_space(probe)
}

/// Device id of the filesystem holding `path` (or its nearest existing ancestor).
pub fn device_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    path.ancestors()
        .find_map(|p| fs_err::metadata(p).ok())
        .map(|m| m.dev())
}

/// Total size of the regular files below `path` (a file counts itself); 0 when missing.
pub fn tree_size(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Opens a staged file.
///
/// # Errors
/// I/O errors naming the file.
pub fn open_staged(root: &Path, entry: &FileEntry) -> io::Result<File> {
    File::open(entry.path.join_to(root))
}
