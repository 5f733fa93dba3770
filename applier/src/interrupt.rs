//! Signals during an apply, a resume or a rollback (docs/OPERATIONS.md,
//! "Apply the bundle" and "If the session drops"):
//!
//! - SIGINT and SIGTERM: the current step finishes, then the apply rolls
//!   back. A second signal is reported and not obeyed mid-step (SIGKILL
//!   still stops the process; `airlock-apply resume` then finishes the job).
//! - SIGHUP (the terminal or SSH session went away): ignored. The
//!   transaction completes or rolls back as it would have; what it prints is
//!   lost, but the journal and the apply's log file keep everything.
//!
//! SIGPIPE is ignored by every Rust program, so a closed pipe only makes
//! writes fail, and the reporter ignores those.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::report::eprint_line;

/// Counts termination signals received.
#[derive(Clone, Default)]
pub struct Interrupt {
    count: Arc<AtomicUsize>,
}

impl Interrupt {
    /// An interrupt that no signal sets (for library use and tests).
    pub fn none() -> Self {
        Self::default()
    }

    /// Catches SIGINT, SIGTERM and SIGHUP from now on, in a background
    /// thread that says on stderr what it will do: `then` (e.g. "finishing
    /// the current step, then rolling back").
    ///
    /// # Errors
    /// An I/O error when the handlers cannot be installed.
    pub fn install(then: &'static str) -> std::io::Result<Self> {
        let interrupt = Self::default();
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        let count = Arc::clone(&interrupt.count);
        std::thread::spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    eprint_line(
                        "airlock-apply: received SIGHUP (the session went away); going on: the journal and the apply's log file under the state folder record the rest",
                    );
                    continue;
                }
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 1 {
                    eprint_line(&format!("airlock-apply: received {name}; {then}"));
                } else {
                    eprint_line(&format!(
                        "airlock-apply: received {name} again; not stopping midway (that would leave a node half-changed). \
                         If this process is killed, run `airlock-apply resume`"
                    ));
                }
            }
        });
        Ok(interrupt)
    }

    /// Whether a signal asked to stop.
    pub fn requested(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 0
    }
}
