//! A small service for the README's demo: it needs nothing but this workspace.
//!
//! `airlock-demo-service --listen 127.0.0.1:PORT --release-file PATH [--config PATH] [--static DIR]`
//!
//! Serves `GET /health` (200 `ok`, or 503 when the config file says
//! `healthy = false`), `GET /version` (the release file's first line) and
//! `GET /static/PATH` (a file of the static folder, a tree the demo bundle
//! installs). It stops on SIGTERM like any process.

// A stand-in service for the demo: a file it cannot read is answered as an
// HTTP error, so the one door to the filesystem (clippy.toml) is not needed.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

struct Args {
    listen: String,
    release_file: PathBuf,
    config: Option<PathBuf>,
    static_dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut listen = None;
    let mut release_file = None;
    let mut config = None;
    let mut static_dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = Some(value()?),
            "--release-file" => release_file = Some(PathBuf::from(value()?)),
            "--config" => config = Some(PathBuf::from(value()?)),
            "--static" => static_dir = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        release_file: release_file.ok_or("--release-file is required")?,
        config,
        static_dir,
    })
}

fn healthy(args: &Args) -> bool {
    let Some(config) = &args.config else {
        return true;
    };
    let text = std::fs::read_to_string(config).unwrap_or_default();
    !text.lines().any(|l| l.replace(' ', "") == "healthy=false")
}

fn respond(mut stream: TcpStream, args: &Args) -> std::io::Result<()> {
    let mut request_line = String::new();
    let mut reader = BufReader::new(&stream);
    reader.read_line(&mut request_line)?;
    // Read the headers to their blank line: a socket closed with unread
    // bytes is reset, and the client may lose the response.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 0 && !header.trim_end().is_empty() {
        header.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/health" if healthy(args) => ("200 OK", "ok\n".to_string()),
        "/health" => (
            "503 Service Unavailable",
            "unhealthy: config says healthy = false\n".to_string(),
        ),
        "/version" => match std::fs::read_to_string(&args.release_file) {
            Ok(text) => (
                "200 OK",
                format!("{}\n", text.lines().next().unwrap_or("").trim()),
            ),
            Err(e) => ("500 Internal Server Error", format!("{e}\n")),
        },
        _ => match (path.strip_prefix("/static/"), &args.static_dir) {
            // Only plain relative names: no `..`, no empty or `.` parts.
            (Some(rel), Some(dir))
                if rel
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..") =>
            {
                match std::fs::read_to_string(dir.join(rel)) {
                    Ok(text) => ("200 OK", text),
                    Err(_) => ("404 Not Found", "not found\n".to_string()),
                }
            }
            _ => ("404 Not Found", "not found\n".to_string()),
        },
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("airlock-demo-service: {e}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(&args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "airlock-demo-service: cannot listen on {}: {e}",
                args.listen
            );
            std::process::exit(1);
        }
    };
    eprintln!("airlock-demo-service listening on {}", args.listen);
    for stream in listener.incoming().flatten() {
        if let Err(e) = respond(stream, &args) {
            eprintln!("airlock-demo-service: {e}");
        }
    }
}
