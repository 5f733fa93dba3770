//! What the operator sees while a command runs: one line per step on stderr,
//! or with `--json` one JSON object per line on stdout:
//! `{"step": "...", "status": "start|ok|failed|info", "detail": "...", "elapsed_ms": N}`.

use std::io::Write as _;
use std::time::Instant;

/// Prints step events.
pub struct Reporter {
    json: bool,
    started: Instant,
}

impl Reporter {
    /// A reporter; `json` selects JSON lines on stdout.
    pub fn new(json: bool) -> Self {
        Self {
            json,
            started: Instant::now(),
        }
    }

    /// Time since the reporter was made.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Reports `status` of `step` with `detail`.
    pub fn event(&self, step: &str, status: &str, detail: &str) {
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        if self.json {
            let line = serde_json::json!({"step": step, "status": status, "detail": detail, "elapsed_ms": elapsed_ms});
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        } else {
            let secs = elapsed_ms as f64 / 1000.0;
            let mark = match status {
                "ok" => "ok",
                "failed" => "FAILED",
                "start" => "..",
                _ => "--",
            };
            if detail.is_empty() {
                eprintln!("[{secs:7.2}s] {mark:>6} {step}");
            } else {
                eprintln!("[{secs:7.2}s] {mark:>6} {step}: {detail}");
            }
        }
    }
}
