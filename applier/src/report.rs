//! What the operator sees while a command runs: one line per event on
//! stderr (`[elapsed]  MARK step: detail`, docs/OPERATIONS.md "Reading the
//! output"), or with `--json` one [`crate::protocol::Message`] per line on
//! stdout. A failed write (a closed pipe, a hung-up terminal) is ignored:
//! output never stops a transaction halfway. An apply, resume or rollback
//! also writes every line to its log file, `STATE_DIR/logs/apply-ID.log`,
//! which outlives a lost session.

use std::cell::RefCell;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::ApplyError;
use crate::protocol::{ErrorReport, Event, Message, Status, PROTOCOL};
use crate::transaction::step::Step;
use crate::transaction::undo::Undo;

/// Lines kept before the log file is opened, at most.
const EARLY_LINES: usize = 1000;

/// Where the human lines also go.
enum Log {
    /// Not opened yet: the first lines, kept for the file.
    Early(Vec<String>),
    /// The apply's log file.
    File(fs_err::File),
    /// It could not be opened.
    Off,
}

/// How much of a command's progress a person sees on stderr
/// (docs/OPERATIONS.md, "Reading the output"). JSON output and the log file
/// always get every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// `--quiet`: failures and the error only.
    Quiet,
    /// One line per step, steps done once per file counted into one line
    /// ([`GROUPED`]); no start lines.
    Normal,
    /// `-v`: every event, start lines too.
    Verbose,
}

/// Labels of steps and undo actions done once per file or per migration:
/// at [`Verbosity::Normal`] a run of them is one line with their count.
pub const GROUPED: &[(&str, &str)] = &[
    ("install", "files"),
    ("backup config", "files"),
    ("backup installed", "files"),
    ("restore", "files"),
    ("remove new file", "files"),
    ("migrate", "migrations"),
];

/// The noun of a [`GROUPED`] step, also when a rolling upgrade's
/// coordinator relays it as `NODE: STEP`.
fn grouped_noun(step: &str) -> Option<&'static str> {
    let own = step.rsplit(": ").next().unwrap_or(step);
    GROUPED
        .iter()
        .find(|(label, _)| *label == own)
        .map(|(_, noun)| *noun)
}

/// A run of [`GROUPED`] events not printed yet.
struct Group {
    /// Its label.
    step: String,
    /// How many finished, or began when none finished (a coordinator
    /// relays a node's start lines only).
    count: usize,
    /// The last one that finished (or began).
    last: Option<Event>,
    /// Whether `count` counts finished ones.
    finished: bool,
}

/// Prints events and reports.
pub struct Reporter {
    json: bool,
    verbosity: Verbosity,
    started: Instant,
    log: RefCell<Log>,
    group: RefCell<Option<Group>>,
    starts: std::cell::Cell<bool>,
}

impl Reporter {
    /// A reporter; `json` selects JSON lines on stdout; people see
    /// [`Verbosity::Normal`].
    pub fn new(json: bool) -> Self {
        Self::with_verbosity(json, Verbosity::Normal)
    }

    /// A reporter that shows people `verbosity`.
    pub fn with_verbosity(json: bool, verbosity: Verbosity) -> Self {
        Self {
            json,
            verbosity,
            started: Instant::now(),
            log: RefCell::new(Log::Early(Vec::new())),
            group: RefCell::new(None),
            starts: std::cell::Cell::new(false),
        }
    }

    /// From now on [`Verbosity::Normal`] shows start lines too: a rolling
    /// upgrade's coordinator relays each node's steps as they begin.
    pub fn show_start_lines(&self) {
        self.starts.set(true);
    }

    /// A progress bar over `total` bytes on stderr, in MiB with the rate and
    /// the time left, when stderr is a terminal and none of `--json`,
    /// `--quiet` and `-v` is given; a hidden one otherwise (its updates cost
    /// nothing).
    pub fn progress_bytes(&self, total: u64) -> indicatif::ProgressBar {
        self.progress(
            total,
            "{spinner} {prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}, {eta} left",
        )
    }

    /// A progress bar over `total` items (files), as [`Reporter::progress_bytes`].
    pub fn progress_items(&self, total: u64) -> indicatif::ProgressBar {
        self.progress(
            total,
            "{spinner} {prefix} [{bar:30}] {pos}/{len} files, {eta} left",
        )
    }

    /// A bytes bar named `prefix` whose position a thread reads from
    /// `counter` every 100 ms, counted from its value now: for work that
    /// counts into a shared counter (the backup's copies,
    /// [`crate::steps::backup::copied_bytes`]). Cleared when dropped.
    pub fn progress_polling(&self, total: u64, prefix: &str, counter: fn() -> u64) -> Polling {
        let bar = self.progress_bytes(total);
        if bar.is_hidden() {
            return Polling { bar, stop: None };
        }
        bar.set_prefix(prefix.to_owned());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let start = counter();
        let thread = {
            let (bar, stop) = (bar.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    bar.set_position(counter().saturating_sub(start));
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Polling {
            bar,
            stop: Some((stop, thread)),
        }
    }

    /// Whether progress bars are drawn: stderr is a terminal and neither
    /// `--json`, `--quiet` nor `-v` (a line per event, which a bar would
    /// draw over) is given.
    pub fn draws_progress(&self) -> bool {
        !self.json
            && self.verbosity == Verbosity::Normal
            && std::io::IsTerminal::is_terminal(&std::io::stderr())
    }

    fn progress(&self, total: u64, template: &str) -> indicatif::ProgressBar {
        if !self.draws_progress() {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    }

    /// From now on every line also goes to the log file at `path` (appended
    /// to, its folder created private), the lines so far first. When it
    /// cannot be opened, that is reported and the command goes on.
    pub fn open_log(&self, path: &Path) {
        let opened = path
            .parent()
            .map_or(Ok(()), airlock_formats::durable::create_private_dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                fs_err::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| e.to_string())
            });
        let early = std::mem::replace(&mut *self.log.borrow_mut(), Log::Off);
        match opened {
            Ok(mut file) => {
                let mut lines = match early {
                    Log::Early(lines) => lines,
                    Log::File(_) | Log::Off => Vec::new(),
                };
                lines.insert(
                    0,
                    format!(
                        "== airlock-apply {} at {} (Unix seconds), pid {}",
                        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
                        crate::state::now(),
                        std::process::id()
                    ),
                );
                for line in lines {
                    let _ = writeln!(file, "{line}");
                }
                *self.log.borrow_mut() = Log::File(file);
            }
            Err(e) => self.event("log", Status::Failed, &format!("cannot write the log: {e}")),
        }
    }

    /// Writes `line` to the log (or keeps it for the log).
    fn log(&self, line: &str) {
        match &mut *self.log.borrow_mut() {
            Log::Early(lines) if lines.len() < EARLY_LINES => lines.push(line.to_owned()),
            Log::File(file) => {
                let _ = writeln!(file, "{line}");
            }
            Log::Early(_) | Log::Off => {}
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

    /// Prints `event` (stderr for people, as much as the verbosity shows;
    /// stdout with `--json`) and logs it.
    pub fn emit(&self, event: &Event) {
        let line = human(event);
        self.log(&line);
        if self.json {
            self.message(&Message::Event(event.clone()));
            return;
        }
        match self.verbosity {
            Verbosity::Verbose => eprint_line(&line),
            Verbosity::Quiet => {
                if event.status == Status::Failed {
                    eprint_line(&line);
                }
            }
            Verbosity::Normal => self.show(event, line),
        }
    }

    /// [`Verbosity::Normal`]: start lines hidden (but the rollback's and the
    /// wait for go's), a run of [`GROUPED`] events counted into one line.
    fn show(&self, event: &Event, line: String) {
        let grouped = grouped_noun(&event.step).is_some();
        if grouped && matches!(event.status, Status::Start | Status::Ok) {
            let same = self
                .group
                .borrow()
                .as_ref()
                .is_some_and(|g| g.step == event.step);
            if !same {
                self.flush_group();
                *self.group.borrow_mut() = Some(Group {
                    step: event.step.clone(),
                    count: 0,
                    last: None,
                    finished: false,
                });
            }
            if let Some(g) = self.group.borrow_mut().as_mut() {
                match event.status {
                    Status::Ok if !g.finished => {
                        (g.count, g.finished) = (1, true);
                        g.last = Some(event.clone());
                    }
                    Status::Ok => {
                        g.count += 1;
                        g.last = Some(event.clone());
                    }
                    _ if !g.finished => {
                        g.count += 1;
                        g.last = Some(event.clone());
                    }
                    _ => {}
                }
            }
            return;
        }
        self.flush_group();
        let shown_start = self.starts.get()
            || matches!(
                event.step.as_str(),
                crate::protocol::label::ROLLBACK | crate::protocol::label::WAIT_FOR_GO
            );
        if event.status != Status::Start || shown_start {
            eprint_line(&line);
        }
    }

    /// Prints the run of grouped events held back: the one line itself when
    /// there was one, else `ok LABEL: N files`. Start lines alone are shown
    /// only where start lines are ([`Reporter::show_start_lines`]).
    pub fn flush_group(&self) {
        let Some(group) = self.group.borrow_mut().take() else {
            return;
        };
        let Some(mut last) = group.last else {
            return;
        };
        if !group.finished && !self.starts.get() {
            return;
        }
        if group.count > 1 {
            let noun = grouped_noun(&group.step).unwrap_or("");
            last.detail = format!("{} {noun} (-v shows each)", group.count);
        }
        eprint_line(&human(&last));
    }

    /// Prints a message as one JSON line on stdout.
    pub fn message(&self, message: &Message) {
        print_line(&message.to_line());
    }

    /// Reports a failed command: `error:` and `help:` on stderr, and with
    /// `--json` an [`ErrorReport`] as the last line on stdout.
    pub fn error(&self, error: &ApplyError) {
        self.flush_group();
        let text = terminal_safe(&format!("error: {error}"));
        self.log(&text);
        eprint_line(&text);
        if let Some(help) = error.help() {
            let text = terminal_safe(&format!("\nhelp: {help}"));
            self.log(&text);
            eprint_line(&text);
        }
        if self.json {
            self.message(&Message::Error(ErrorReport::of(error)));
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.flush_group();
    }
}

/// A progress bar kept up to date by a thread ([`Reporter::progress_polling`]).
pub struct Polling {
    bar: indicatif::ProgressBar,
    stop: Option<(
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<()>,
    )>,
}

impl Drop for Polling {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.stop.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = thread.join();
        }
        self.bar.finish_and_clear();
    }
}

/// `text` as it may go to a terminal or a log: control and bidirectional
/// formatting characters escaped (docs/FORMAT.md, "Reader rules"), except
/// the newlines of a command's output that a message quotes.
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c != '\n' && airlock_formats::shown::is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// An event as one line for people: `[elapsed]  MARK step: detail`.
fn human(event: &Event) -> String {
    let secs = Duration::from_millis(event.elapsed_ms).as_secs_f64();
    let mark = match event.status {
        Status::Ok => "ok",
        Status::Failed => "FAILED",
        Status::Start => "..",
        Status::Info => "--",
    };
    let step = terminal_safe(&event.step);
    if event.detail.is_empty() {
        format!("[{secs:7.2}s] {mark:>6} {step}")
    } else {
        format!(
            "[{secs:7.2}s] {mark:>6} {step}: {}",
            terminal_safe(&event.detail)
        )
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
