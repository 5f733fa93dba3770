//! How the coordinator reaches a node (docs/SITE.md, "Transports"): `local`
//! runs `airlock-apply` here, `ssh` runs it through the operator's own
//! OpenSSH client (`ssh`, `scp` with `BatchMode=yes`), so their ssh config,
//! keys and jump hosts work. A node's output is read only as typed
//! [`crate::protocol`] messages; a node speaking another protocol version is
//! refused before it is asked to change anything.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::protocol::{
    parse_line, ErrorReport, Event, Message, ProtocolError, StatusReport, PROTOCOL,
};

use super::profile::{NodeProfile, TransportKind};

/// Why a command could not be run on a node, or its output not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// `ssh`, `scp` or `airlock-apply` could not be started here.
    #[error("node {node}: cannot run {program}: {source}")]
    Spawn {
        /// The node.
        node: String,
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `scp` failed, or the bundle's volumes could not be listed here.
    #[error("node {node}: copying the bundle with scp failed: {stderr}")]
    Copy {
        /// The node.
        node: String,
        /// What scp said.
        stderr: String,
    },
    /// `scp` failed because ssh cannot log in to the node without a
    /// prompt: `ssh -o BatchMode=yes HOST true` fails too (permission
    /// denied, unknown host key, connection refused or timed out).
    #[error("node {node}: cannot copy the bundle: ssh cannot log in to host {host} without a prompt (BatchMode=yes): `{check}` said {said}; set up a login that needs no password, passphrase or host key question (an ssh agent or an identity_file without a passphrase, authorized on the node; the node's host key in known_hosts) until that command succeeds")]
    Login {
        /// The node.
        node: String,
        /// Its `host`.
        host: String,
        /// The login check that failed, as a command line.
        check: String,
        /// What ssh printed (quoted), or its exit code.
        said: String,
    },
    /// `scp` failed although ssh logs in: the node's sshd offers no
    /// working `sftp` subsystem, which OpenSSH 9's scp copies with.
    #[error("node {node}: cannot copy the bundle: the sshd on host {host} offers no `sftp` subsystem, which scp of OpenSSH 9 and later copies with (`{check}` said {said}); add `Subsystem sftp internal-sftp` (or the path of sftp-server, e.g. `Subsystem sftp /usr/lib/openssh/sftp-server`) to the node's sshd_config and reload sshd")]
    NoSftp {
        /// The node.
        node: String,
        /// Its `host`.
        host: String,
        /// The subsystem check that failed, as a command line.
        check: String,
        /// What ssh printed (quoted), or its exit code.
        said: String,
    },
    /// `scp` failed although ssh logs in and sftp starts: the file could
    /// not be written in `bundle_dir`.
    #[error("node {node}: copying the bundle with scp to {target} failed: {said}; ssh login and sftp work, so check that bundle_dir `{dir}` exists on the node, that the login user may write to it, and that it has room for the bundle")]
    Upload {
        /// The node.
        node: String,
        /// `[USER@]HOST:PATH`, as scp was given it.
        target: String,
        /// `bundle_dir`.
        dir: String,
        /// What scp printed (quoted), or its exit code.
        said: String,
    },
    /// Waiting for the command failed.
    #[error("node {node}: {source}")]
    Wait {
        /// The node.
        node: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The node's airlock-apply speaks another protocol version.
    #[error("node {node} runs an airlock-apply that speaks protocol {}, this airlock-apply speaks {PROTOCOL}", .found.map_or_else(|| "without a version (an older airlock)".to_string(), |v| v.to_string()))]
    Protocol {
        /// The node.
        node: String,
        /// Its version, if it sent one.
        found: Option<u32>,
    },
    /// The node printed something that is not a message.
    #[error("node {node}: {source}")]
    Invalid {
        /// The node.
        node: String,
        /// What was wrong.
        #[source]
        source: ProtocolError,
    },
}

/// The outcome of `airlock-apply` run on a node.
#[derive(Debug, Clone, Default)]
pub struct NodeRun {
    /// Exit code; -1 when killed or unknown.
    pub code: i32,
    /// The events it printed.
    pub events: Vec<Event>,
    /// Its status report (`status`).
    pub status: Option<StatusReport>,
    /// Its error report, when it failed.
    pub error: Option<ErrorReport>,
    /// Its standard error (people's text, and ssh's own errors).
    pub stderr: String,
}

impl NodeRun {
    /// Why it failed: the node's error report, else (ssh could not reach
    /// it, it was killed) the last line of its stderr, else its exit code.
    pub fn failure(&self) -> String {
        match &self.error {
            Some(report) => report.error.clone(),
            None => self
                .stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map_or_else(|| format!("exit {}", self.code), |l| l.trim().to_owned()),
        }
    }
}

/// `-s SUBSYSTEM` goes before the destination, a remote command after it.
fn split_subsystem<'a>(args: &'a [&'a str]) -> (&'a [&'a str], &'a [&'a str]) {
    if args.first() == Some(&"-s") {
        args.split_at(1)
    } else {
        (&[], args)
    }
}

/// What a command printed on stderr, quoted on one line; its exit code
/// when it printed nothing.
fn said(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .collect();
    if lines.is_empty() {
        match out.status.code() {
            Some(code) => format!("nothing (exit {code})"),
            None => "nothing (killed by a signal)".to_owned(),
        }
    } else {
        format!("`{}`", lines.join("; "))
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

impl NodeProfile {
    fn ssh_base(&self, program: &str, options: &[String]) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("-o").arg("BatchMode=yes");
        if let Some(port) = self.port {
            cmd.arg(if program == "scp" { "-P" } else { "-p" })
                .arg(port.to_string());
        }
        if let Some(id) = &self.identity_file {
            cmd.arg("-i").arg(id);
        }
        cmd.args(options);
        cmd
    }

    fn destination(&self) -> String {
        let host = self.host.clone().unwrap_or_default();
        match &self.user {
            Some(user) => format!("{user}@{host}"),
            None => host,
        }
    }

    fn spawn_error(&self, program: &str) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
        let program = program.to_owned();
        move |source| NodeError::Spawn {
            node: self.name.clone(),
            program,
            source,
        }
    }

    /// Makes the bundle available on the node; returns its path there.
    ///
    /// # Errors
    /// [`NodeError`] naming the node when the copy fails.
    pub fn copy_bundle(&self, bundle: &Path, ssh_options: &[String]) -> Result<String, NodeError> {
        let absolute = std::path::absolute(bundle).map_err(self.spawn_error("scp"))?;
        if self.transport == TransportKind::Local {
            return Ok(absolute.display().to_string());
        }
        let dir = self
            .bundle_dir
            .as_deref()
            .unwrap_or("/tmp")
            .trim_end_matches('/')
            .to_owned();
        // A volume set travels as its index and data volumes, read on the
        // node in place as here (docs/FORMAT.md, "Volumes").
        let name_of = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let (files, name) = if airlock_formats::VolumeSet::is_set(&absolute) {
            let set = airlock_formats::VolumeSet::open(&absolute).map_err(|e| NodeError::Copy {
                node: self.name.clone(),
                stderr: e.to_string(),
            })?;
            let mut files = vec![set.index_path.clone()];
            files.extend(set.index.volumes.iter().map(|v| set.path_of(v)));
            (files, name_of(&set.index_path))
        } else {
            (vec![absolute.clone()], name_of(bundle))
        };
        let remote = format!("{dir}/{name}");
        let target = if files.len() == 1 {
            remote.clone()
        } else {
            format!("{dir}/")
        };
        let out = self
            .ssh_base("scp", ssh_options)
            .arg("-q")
            .args(&files)
            .arg(format!("{}:{}", self.destination(), target))
            .stdin(Stdio::null())
            .output()
            .map_err(self.spawn_error("scp"))?;
        if !out.status.success() {
            return Err(self.copy_failure(&out, &dir, &target, ssh_options));
        }
        Ok(remote)
    }

    /// Why `scp` failed. OpenSSH 9's scp says only `Connection closed`
    /// both when ssh cannot log in and when the node's sshd offers no
    /// `sftp` subsystem, so this asks ssh itself, one question at a time:
    /// `ssh -o BatchMode=yes HOST true`, then `ssh -s HOST sftp`.
    fn copy_failure(
        &self,
        scp: &Output,
        dir: &str,
        target: &str,
        ssh_options: &[String],
    ) -> NodeError {
        let login_args = ["true"];
        match self.ask_ssh(ssh_options, &login_args) {
            Err(e) => return e,
            Ok(out) if !out.status.success() => {
                return NodeError::Login {
                    node: self.name.clone(),
                    host: self.host.clone().unwrap_or_default(),
                    check: self.ssh_line(ssh_options, &login_args),
                    said: said(&out),
                };
            }
            Ok(_) => {}
        }
        let sftp_args = ["-s", "sftp"];
        match self.ask_ssh(ssh_options, &sftp_args) {
            Err(e) => e,
            Ok(out) if !out.status.success() => NodeError::NoSftp {
                node: self.name.clone(),
                host: self.host.clone().unwrap_or_default(),
                check: self.ssh_line(ssh_options, &sftp_args),
                said: said(&out),
            },
            Ok(_) => NodeError::Upload {
                node: self.name.clone(),
                target: format!("{}:{target}", self.destination()),
                dir: dir.to_owned(),
                said: said(scp),
            },
        }
    }

    /// Runs `ssh -o BatchMode=yes … DESTINATION ARGS` (`-s` goes before
    /// the destination) with its input closed, and returns what it did.
    fn ask_ssh(&self, ssh_options: &[String], args: &[&str]) -> Result<Output, NodeError> {
        let (before, after) = split_subsystem(args);
        self.ssh_base("ssh", ssh_options)
            .args(before)
            .arg(self.destination())
            .args(after)
            .stdin(Stdio::null())
            .output()
            .map_err(self.spawn_error("ssh"))
    }

    /// [`Self::ask_ssh`] as a command line an operator can run.
    fn ssh_line(&self, ssh_options: &[String], args: &[&str]) -> String {
        let (before, after) = split_subsystem(args);
        let mut line = vec!["ssh".to_owned(), "-o".into(), "BatchMode=yes".into()];
        if let Some(port) = self.port {
            line.extend(["-p".to_owned(), port.to_string()]);
        }
        if let Some(id) = &self.identity_file {
            line.extend(["-i".to_owned(), id.display().to_string()]);
        }
        line.extend(ssh_options.iter().cloned());
        line.extend(before.iter().map(|a| (*a).to_owned()));
        line.push(self.destination());
        line.extend(after.iter().map(|a| (*a).to_owned()));
        line.iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs `airlock-apply --json ARGS` on the node, passing each event to
    /// `on_event` as it arrives.
    ///
    /// # Errors
    /// [`NodeError`] naming the node when the command cannot be started, or
    /// when it prints something other than this protocol's messages (another
    /// airlock version): then no event of it was passed on.
    pub fn airlock_apply(
        &self,
        args: &[&str],
        ssh_options: &[String],
        on_event: impl FnMut(&Event),
    ) -> Result<NodeRun, NodeError> {
        self.airlock_apply_gated(args, ssh_options, None, on_event)
    }

    /// [`Self::airlock_apply`] for `apply --wait-for-go`: the word `go`
    /// goes to the command's standard input when `gate` receives `true`,
    /// `stop` when it receives `false`, and the input closes right after
    /// (or at once when the sender is dropped), so the node never waits for
    /// a coordinator that is gone.
    ///
    /// # Errors
    /// As [`Self::airlock_apply`].
    pub fn airlock_apply_gated(
        &self,
        args: &[&str],
        ssh_options: &[String],
        gate: Option<std::sync::mpsc::Receiver<bool>>,
        mut on_event: impl FnMut(&Event),
    ) -> Result<NodeRun, NodeError> {
        let mut cmd = match self.transport {
            TransportKind::Local => {
                let program = match &self.airlock_apply {
                    Some(p) => PathBuf::from(p),
                    None => std::env::current_exe().map_err(self.spawn_error("airlock-apply"))?,
                };
                let mut cmd = Command::new(program);
                cmd.arg("--json").args(args);
                cmd
            }
            TransportKind::Ssh => {
                let program = self.airlock_apply.as_deref().unwrap_or("airlock-apply");
                let mut line = vec![shell_quote(program), "--json".into()];
                line.extend(args.iter().map(|a| shell_quote(a)));
                let mut cmd = self.ssh_base("ssh", ssh_options);
                cmd.arg(self.destination()).arg("--").arg(line.join(" "));
                cmd
            }
        };
        let mut child = cmd
            .stdin(if gate.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(self.spawn_error("airlock-apply"))?;
        if let (Some(gate), Some(mut stdin)) = (gate, child.stdin.take()) {
            std::thread::spawn(move || {
                if let Ok(go) = gate.recv() {
                    // A node that ended already has closed its input.
                    let _ = stdin.write_all(if go { b"go\n" } else { b"stop\n" });
                }
            });
        }
        let mut stderr_pipe = child.stderr.take();
        let stderr_thread = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(p) = stderr_pipe.as_mut() {
                let _ = p.read_to_string(&mut s);
            }
            s
        });
        let mut run = NodeRun::default();
        let mut unreadable = None;
        if let Some(stdout) = child.stdout.take() {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim().is_empty() || unreadable.is_some() {
                    // After the first unreadable line, only drain the pipe.
                    continue;
                }
                match parse_line(&line) {
                    Ok(Message::Event(event)) => {
                        on_event(&event);
                        run.events.push(event);
                    }
                    Ok(Message::Status(status)) => run.status = Some(status),
                    Ok(Message::Error(report)) => run.error = Some(report),
                    // A node's other messages (its `applied` summary) add nothing here.
                    Ok(_) => {}
                    Err(ProtocolError::Version { found }) => {
                        unreadable = Some(NodeError::Protocol {
                            node: self.name.clone(),
                            found,
                        });
                    }
                    Err(source) => {
                        unreadable = Some(NodeError::Invalid {
                            node: self.name.clone(),
                            source,
                        });
                    }
                }
            }
        }
        let status = child.wait().map_err(|source| NodeError::Wait {
            node: self.name.clone(),
            source,
        })?;
        run.stderr = stderr_thread.join().unwrap_or_default();
        run.code = status.code().unwrap_or(-1);
        match unreadable {
            Some(e) => Err(e),
            None => Ok(run),
        }
    }
}

/// Polls `check` until it returns true or `wait` passes, as often as
/// [`crate::steps::service::poll_interval`] says.
pub fn wait_until(wait: Duration, mut check: impl FnMut() -> bool) -> bool {
    let began = std::time::Instant::now();
    let deadline = began + wait;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(crate::steps::service::poll_interval(began.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_quoted_for_the_remote_shell() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("--site"), "--site");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_checks_of_a_failed_copy_are_commands_an_operator_can_run() {
        let mut node = NodeProfile::local("n1", "site.toml");
        node.transport = TransportKind::Ssh;
        node.host = Some("db-1".into());
        node.user = Some("airlock".into());
        node.port = Some(2222);
        node.identity_file = Some("/keys/id key".into());
        let options = ["-o".to_owned(), "ConnectTimeout=5".to_owned()];
        assert_eq!(
            node.ssh_line(&options, &["true"]),
            "ssh -o BatchMode=yes -p 2222 -i '/keys/id key' -o ConnectTimeout=5 airlock@db-1 true"
        );
        assert_eq!(
            node.ssh_line(&[], &["-s", "sftp"]),
            "ssh -o BatchMode=yes -p 2222 -i '/keys/id key' -s airlock@db-1 sftp"
        );
    }

    #[test]
    fn what_ssh_said_is_quoted_on_one_line() {
        let out = |stderr: &str| {
            let status = Command::new("sh")
                .arg("-c")
                .arg("exit 255")
                .status()
                .unwrap();
            Output {
                status,
                stdout: Vec::new(),
                stderr: stderr.as_bytes().to_vec(),
            }
        };
        assert_eq!(
            said(&out("Warning: Permanently added 'h' (ED25519) to the list of known hosts.\r\nsubsystem request failed on channel 0\n")),
            "`subsystem request failed on channel 0`"
        );
        assert_eq!(
            said(&out("scp: dest open \"/x/b\": No such file or directory\nscp: failed to upload file b to /x/b\n")),
            "`scp: dest open \"/x/b\": No such file or directory; scp: failed to upload file b to /x/b`"
        );
        assert_eq!(said(&out("")), "nothing (exit 255)");
    }

    #[test]
    fn a_node_of_another_protocol_is_refused_before_any_event_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("airlock-apply");
        fs_err::write(
            &fake,
            "#!/bin/sh\necho '{\"step\":\"stop\",\"status\":\"start\",\"detail\":\"\",\"elapsed_ms\":1}'\n",
        )
        .unwrap();
        fs_err::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut node = NodeProfile::local("n2", "site.toml");
        node.airlock_apply = Some(fake.display().to_string());
        let mut seen = 0;
        let err = node
            .airlock_apply(&["status"], &[], |_| seen += 1)
            .unwrap_err();
        assert_eq!(seen, 0);
        assert!(
            matches!(err, NodeError::Protocol { found: None, .. }),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains("node n2"), "{message}");
        assert!(message.contains("protocol"), "{message}");
    }
}
