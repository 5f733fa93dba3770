//! The service: the site's stop and start commands and hooks, each run with
//! a timeout, and its probes (command or HTTP) for health and version
//! (docs/SITE.md, "How commands run" and "Probes"). Output of a failed
//! command is kept for the report.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use semver::Version;

use crate::error::StepError;
use crate::site::{Probe, Service, Site};

/// How a command ended.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// Exit status code; `None` when killed by a signal or the timeout.
    pub code: Option<i32>,
    /// Whether the timeout killed it.
    pub timed_out: bool,
    /// Standard output, lossily decoded: its last 64 KiB.
    pub stdout: String,
    /// Standard error, lossily decoded: its last 64 KiB.
    pub stderr: String,
}

impl CommandOutput {
    /// Exit code 0 within the timeout.
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// A one-paragraph description for an error message.
    pub fn describe(&self, what: &str) -> String {
        let status = if self.timed_out {
            "timed out".to_owned()
        } else {
            match self.code {
                Some(c) => format!("exited with {c}"),
                None => "was killed by a signal".to_owned(),
            }
        };
        let mut out = format!("{what} {status}");
        for (name, text) in [("stderr", &self.stderr), ("stdout", &self.stdout)] {
            let text = text.trim();
            if !text.is_empty() {
                let tail: String = text
                    .lines()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n    ");
                out.push_str(&format!("\n  {name}:\n    {tail}"));
            }
        }
        out
    }
}

const OUTPUT_LIMIT: usize = 64 * 1024;

/// Runs `sh -c COMMAND` in `dir` with extra environment `env`, killing its
/// process group after `timeout`.
///
/// Output is read until the shell exits; a daemon the command leaves behind
/// that keeps the pipes open is given one more second, then no longer read.
///
/// # Errors
/// An I/O error when the shell cannot be started.
pub fn run_command(
    command: &str,
    dir: &Path,
    env: &[(String, String)],
    timeout: Duration,
) -> std::io::Result<CommandOutput> {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let (tx, rx) = mpsc::channel();
    for (is_err, pipe) in [
        (
            false,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            true,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        if let Some(pipe) = pipe {
            let tx = tx.clone();
            std::thread::spawn(move || {
                // Read to the end, so a chatty command never dies of SIGPIPE,
                // and keep the last OUTPUT_LIMIT bytes, where errors usually are.
                let mut pipe = pipe;
                let mut kept: Vec<u8> = Vec::new();
                let mut chunk = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    kept.extend_from_slice(&chunk[..n]);
                    if kept.len() > 2 * OUTPUT_LIMIT {
                        kept.drain(..kept.len() - OUTPUT_LIMIT);
                    }
                }
                if kept.len() > OUTPUT_LIMIT {
                    kept.drain(..kept.len() - OUTPUT_LIMIT);
                }
                let _ = tx.send((is_err, String::from_utf8_lossy(&kept).into_owned()));
            });
        }
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            kill_group(child.id());
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = CommandOutput {
        code: status.code(),
        timed_out,
        stdout: String::new(),
        stderr: String::new(),
    };
    let grace = Instant::now() + Duration::from_secs(1);
    for _ in 0..2 {
        let left = grace.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((false, s)) => out.stdout = s,
            Ok((true, s)) => out.stderr = s,
            Err(_) => break,
        }
    }
    Ok(out)
}

fn kill_group(pid: u32) {
    // The group id equals the shell's pid (process_group(0)).
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Result of one probe.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// Whether the check passed.
    pub ok: bool,
    /// Output (command stdout or HTTP body) or the failure description.
    pub output: String,
}

/// Runs `probe` once.
pub fn run_probe(probe: &Probe, dir: &Path, env: &[(String, String)]) -> ProbeResult {
    if let Some(command) = &probe.command {
        match run_command(command, dir, env, probe.timeout()) {
            Ok(out) if out.success() => ProbeResult {
                ok: true,
                output: out.stdout,
            },
            Ok(out) => ProbeResult {
                ok: false,
                output: out.describe(&format!("`{command}`")),
            },
            Err(e) => ProbeResult {
                ok: false,
                output: format!("cannot run `{command}`: {e}"),
            },
        }
    } else if let Some(url) = &probe.url {
        http_get(url, probe.timeout())
    } else {
        ProbeResult {
            ok: false,
            output: "probe has neither command nor url".into(),
        }
    }
}

fn http_get(url: &str, timeout: Duration) -> ProbeResult {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into();
    match agent.get(url).call() {
        Ok(mut resp) => ProbeResult {
            ok: true,
            output: resp.body_mut().read_to_string().unwrap_or_default(),
        },
        Err(e) => ProbeResult {
            ok: false,
            output: format!("GET {url}: {e}"),
        },
    }
}

/// Finds the first SemVer version in `text` (a leading `v` is allowed), e.g.
/// `1.2.3` in `demo version v1.2.3 (abc)`.
pub fn find_version(text: &str) -> Option<Version> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+')))
        .filter_map(|token| Version::parse(token.strip_prefix('v').unwrap_or(token)).ok())
        .next()
}

/// How long to wait before the next probe, `waited` into a wait: every
/// 50 ms for the first 2 s (a service that stops or starts quickly is seen
/// at once: each poll's wait is downtime), then every 250 ms.
pub fn poll_interval(waited: Duration) -> Duration {
    if waited < Duration::from_secs(2) {
        Duration::from_millis(50)
    } else {
        Duration::from_millis(250)
    }
}

/// Polls the health check (see [`poll_interval`]) until it reports `want`
/// (healthy or not) or `wait` passes. Returns the last result.
pub fn wait_health(
    service: &Service,
    dir: &Path,
    env: &[(String, String)],
    want: bool,
    wait: Duration,
) -> ProbeResult {
    let began = Instant::now();
    let deadline = began + wait;
    loop {
        let result = run_probe(&service.health, dir, env);
        if result.ok == want || Instant::now() >= deadline {
            return result;
        }
        std::thread::sleep(poll_interval(began.elapsed()));
    }
}

/// The site's service with the environment of one apply: stops, starts,
/// waits for health and runs hooks.
pub struct ServiceControl<'a> {
    site: &'a Site,
    env: &'a [(String, String)],
}

impl<'a> ServiceControl<'a> {
    /// Controls `site`'s service; commands get `env` added to their environment.
    pub fn new(site: &'a Site, env: &'a [(String, String)]) -> Self {
        Self { site, env }
    }

    fn service(&self) -> &Service {
        &self.site.profile.service
    }

    /// Runs a site command or hook (`what` names it in messages) with the
    /// profile's `command_timeout_secs`.
    ///
    /// # Errors
    /// [`StepError::Spawn`] or [`StepError::Command`] with its output.
    pub fn run(&self, what: &str, command: &str) -> Result<(), StepError> {
        let timeout = Duration::from_secs(self.service().command_timeout_secs);
        let output = run_command(command, &self.site.dir, self.env, timeout).map_err(|source| {
            StepError::Spawn {
                what: what.into(),
                command: command.into(),
                source,
            }
        })?;
        if output.success() {
            Ok(())
        } else {
            Err(StepError::Command {
                what: what.into(),
                command: command.into(),
                output: Box::new(output),
            })
        }
    }

    /// Runs the stop command and waits until the service is stopped: its
    /// health check fails, and no process holds a lock on any of its
    /// databases any more (a process on its way down may still be writing),
    /// all within `stop_wait_secs`.
    ///
    /// # Errors
    /// The command's failure, [`StepError::StillRunning`] or
    /// [`StepError::DatabaseInUse`].
    pub fn stop(&self) -> Result<(), StepError> {
        let service = self.service();
        let deadline = Instant::now() + Duration::from_secs(service.stop_wait_secs);
        self.run("stop", &service.stop)?;
        let left = || deadline.saturating_duration_since(Instant::now());
        if wait_health(service, &self.site.dir, self.env, false, left()).ok {
            return Err(StepError::StillRunning {
                service: service.name.clone(),
                secs: service.stop_wait_secs,
            });
        }
        for (name, path) in &self.site.profile.data.databases {
            super::backup::wait_unlocked(name, path, left(), service.stop_wait_secs)?;
        }
        Ok(())
    }

    /// Runs the start command (it returns once the daemon is launched).
    ///
    /// # Errors
    /// The command's failure.
    pub fn start(&self) -> Result<(), StepError> {
        self.run("start", &self.service().start)
    }

    /// Waits until the service is healthy and its version probe (if any)
    /// reports `version`, within `health_wait_secs`.
    ///
    /// # Errors
    /// [`StepError::Unhealthy`] or [`StepError::WrongVersion`].
    pub fn wait_ready(&self, version: &Version) -> Result<(), StepError> {
        let service = self.service();
        let wait = Duration::from_secs(service.health_wait_secs);
        let began = Instant::now();
        let deadline = began + wait;
        let health = wait_health(service, &self.site.dir, self.env, true, wait);
        if !health.ok {
            return Err(StepError::Unhealthy {
                service: service.name.clone(),
                secs: service.health_wait_secs,
                output: health.output,
            });
        }
        let Some(probe) = &service.version else {
            return Ok(());
        };
        loop {
            let result = run_probe(probe, &self.site.dir, self.env);
            let found = result.ok.then(|| find_version(&result.output)).flatten();
            if found.as_ref() == Some(version) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StepError::WrongVersion {
                    service: service.name.clone(),
                    found: found
                        .map_or_else(|| format!("`{}`", result.output.trim()), |v| v.to_string()),
                    expected: version.clone(),
                });
            }
            std::thread::sleep(poll_interval(began.elapsed()));
        }
    }

    /// Runs the start command, then waits until `version` is ready.
    ///
    /// # Errors
    /// As [`Self::start`] and [`Self::wait_ready`].
    pub fn start_and_wait(&self, version: &Version) -> Result<(), StepError> {
        self.start()?;
        self.wait_ready(version)
    }

    /// Runs a hook script (an executable staged from the bundle).
    ///
    /// # Errors
    /// The hook's failure.
    pub fn hook(&self, what: &str, script: &Path) -> Result<(), StepError> {
        self.run(what, &shell_quote(script))
    }
}

/// `path` quoted for `sh -c`.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_versions_in_probe_output() {
        assert_eq!(
            find_version("demo v1.2.3 (abc)"),
            Some(Version::new(1, 2, 3))
        );
        assert_eq!(find_version("1.1.0\n"), Some(Version::new(1, 1, 0)));
        assert_eq!(
            find_version("etcd Version: 3.4.23"),
            Some(Version::new(3, 4, 23))
        );
        assert_eq!(find_version("no version"), None);
    }

    #[test]
    fn commands_time_out_and_report_output() {
        let dir = std::env::temp_dir();
        let out = run_command(
            "echo hi; echo oops >&2; exit 3",
            &dir,
            &[],
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout.trim(), "hi");
        assert!(out.describe("stop").contains("oops"));
        let started = Instant::now();
        let out = run_command("sleep 30", &dir, &[], Duration::from_millis(300)).unwrap();
        assert!(out.timed_out);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_daemon_holding_the_pipes_does_not_hang_the_applier() {
        let dir = std::env::temp_dir();
        let started = Instant::now();
        let out = run_command(
            "sleep 20 & echo started",
            &dir,
            &[],
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(out.success());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
