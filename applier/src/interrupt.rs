//! SIGINT and SIGTERM during an apply: the current step finishes, then the
//! apply rolls back. A second signal is reported and not obeyed mid-step
//! (SIGKILL still stops the process; `airlock-apply resume` then finishes the job).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
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

    /// Catches SIGINT and SIGTERM from now on, in a background thread that
    /// says on stderr what it will do: `then` (e.g. "finishing the current
    /// step, then rolling back").
    ///
    /// # Errors
    /// An I/O error when the handlers cannot be installed.
    pub fn install(then: &'static str) -> std::io::Result<Self> {
        let interrupt = Self::default();
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let count = Arc::clone(&interrupt.count);
        std::thread::spawn(move || {
            for signal in signals.forever() {
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
