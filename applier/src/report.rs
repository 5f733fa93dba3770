//! What the operator sees while a command runs: one line per event on
//! stderr (`[elapsed]  MARK step: detail`, docs/OPERATIONS.md "Reading the
//! output"), or with `--json` one [`crate::protocol::Message`] per line on
//! stdout. A failed write (a closed pipe, a hung-up terminal) is ignored:
//! output never stops a transaction halfway.

use std::io::Write as _;
use std::time::Instant;

use crate::error::ApplyError;
use crate::protocol::{ErrorReport, Event, Message, Status, PROTOCOL};
use crate::transaction::step::Step;
use crate::transaction::undo::Undo;

/// Prints events and reports.
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

    /// Whether it prints JSON.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Time since the reporter was made.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    fn make(&self, step: &str, status: Status, detail: &str) -> Event {
        Event {
            protocol: PROTOCOL,
            step: step.into(),
            status,
            detail: detail.into(),
            elapsed_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            apply_step: None,
            undo: None,
        }
    }

    /// Reports `status` of `step` (a label) with `detail`.
    pub fn event(&self, step: &str, status: Status, detail: &str) {
        self.emit(&self.make(step, status, detail));
    }

    /// Reports a transaction step.
    pub fn step(&self, step: &Step, status: Status, detail: &str) {
        let mut event = self.make(step.label(), status, detail);
        event.apply_step = Some(step.clone());
        self.emit(&event);
    }

    /// Reports an undo action.
    pub fn undo(&self, undo: &Undo, status: Status, detail: &str) {
        let mut event = self.make(undo.label(), status, detail);
        event.undo = Some(undo.clone());
        self.emit(&event);
    }

    /// Prints `event` (stderr for people, stdout with `--json`).
    pub fn emit(&self, event: &Event) {
        if self.json {
            self.message(&Message::Event(event.clone()));
            return;
        }
        let secs = event.elapsed_ms as f64 / 1000.0;
        let mark = match event.status {
            Status::Ok => "ok",
            Status::Failed => "FAILED",
            Status::Start => "..",
            Status::Info => "--",
        };
        let line = if event.detail.is_empty() {
            format!("[{secs:7.2}s] {mark:>6} {}", event.step)
        } else {
            format!("[{secs:7.2}s] {mark:>6} {}: {}", event.step, event.detail)
        };
        eprint_line(&line);
    }

    /// Prints a message as one JSON line on stdout.
    pub fn message(&self, message: &Message) {
        print_line(&message.to_line());
    }

    /// Reports a failed command: `error:` and `help:` on stderr, and with
    /// `--json` an [`ErrorReport`] as the last line on stdout.
    pub fn error(&self, error: &ApplyError) {
        eprint_line(&format!("error: {error}"));
        if let Some(help) = error.help() {
            eprint_line(&format!("\nhelp: {help}"));
        }
        if self.json {
            self.message(&Message::Error(ErrorReport::of(error)));
        }
    }
}

/// Writes `line` to stdout and flushes; a failed write is ignored.
pub fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Writes `line` to stderr; a failed write is ignored.
pub fn eprint_line(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
