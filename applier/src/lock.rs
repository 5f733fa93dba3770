//! One apply at a time per node: an flock(2) on `STATE_DIR/apply.lock`
//! (`File::try_lock`). The kernel drops the lock when its holder dies, so a
//! lock left by a killed process is taken over at once, and a live holder is
//! never overridden. The holder writes its pid into the file for messages.

use std::io::{Read as _, Seek as _, Write as _};
use std::path::Path;

use fs_err::File;

use crate::error::ApplyError;
use crate::site::Site;

/// Name of the lock file in the state folder.
pub const LOCK_FILE: &str = "apply.lock";

/// Holds the node's apply lock until dropped.
pub struct NodeLock {
    _file: File,
}

/// Takes the node's apply lock, `STATE_DIR/apply.lock`.
///
/// # Errors
/// [`ApplyError::Busy`] naming the holder's pid when another live process holds it.
pub fn lock(site: &Site) -> Result<NodeLock, ApplyError> {
    lock_in(&site.profile.paths.state_dir, LOCK_FILE)
}

/// The pid the live holder of the node's lock wrote, or `None` when no
/// process holds it. Takes a shared lock for an instant to find out, so it
/// never waits and never stops an apply from starting but for that instant.
///
/// # Errors
/// [`ApplyError::Io`] when the lock file exists but cannot be read.
pub fn holder(site: &Site) -> Result<Option<String>, ApplyError> {
    let path = site.profile.paths.state_dir.join(LOCK_FILE);
    if !fs_err::exists(&path).map_err(ApplyError::io("checking the lock"))? {
        return Ok(None);
    }
    let mut file = File::open(&path).map_err(ApplyError::io("reading the lock"))?;
    match file.try_lock_shared() {
        Ok(()) => Ok(None),
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Ok(Some(pid.trim().to_owned()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(ApplyError::io(format!(
            "checking the lock `{}`",
            path.display()
        ))(e)),
    }
}

/// Takes the lock file `name` in `dir` (created if missing) and writes this
/// process's pid into it.
///
/// # Errors
/// [`ApplyError::Busy`] naming the holder's pid when another live process holds it.
pub fn lock_in(dir: &Path, name: &str) -> Result<NodeLock, ApplyError> {
    fs_err::create_dir_all(dir).map_err(ApplyError::io("creating the state folder"))?;
    let path = dir.join(name);
    let mut file = fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(ApplyError::io("opening the lock"))?;
    match file.try_lock() {
        Ok(()) => {
            let pid = std::process::id().to_string();
            let _ = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(pid.as_bytes()));
            Ok(NodeLock { _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            Err(ApplyError::Busy {
                lock: path,
                holder: format!("pid {}", holder.trim()),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(ApplyError::io(format!("locking `{}`", path.display()))(e))
        }
    }
}
