//! What `--json` prints (docs/JSON.md, "airlock-build"): one JSON object a
//! line on stdout, each a typed struct with its `"type"` in front; without
//! `--json`, the command's plain result line instead.

use std::path::PathBuf;

use serde::Serialize;

/// Where a command's results go: JSON lines or text on stdout.
pub(crate) struct Output {
    json: bool,
}

/// A line of output: `{"type": KIND, ...the fields of body}`.
#[derive(Serialize)]
struct Line<'a, T> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(flatten)]
    body: &'a T,
}

/// The last line of a failed command under `--json`.
#[derive(Serialize)]
struct ErrorLine<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    help: Option<&'a str>,
    exit_code: u8,
}

impl Output {
    /// Output as JSON lines when `json`, else as text.
    pub(crate) fn new(json: bool) -> Self {
        Self { json }
    }

    /// Prints `body` as one line of type `kind` under `--json`; otherwise
    /// `text`, when there is any, as a line on stdout.
    pub(crate) fn result<T: Serialize>(
        &self,
        kind: &str,
        body: &T,
        text: impl FnOnce() -> Option<String>,
    ) -> serde_json::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string(&Line { kind, body })?);
        } else if let Some(text) = text() {
            println!("{text}");
        }
        Ok(())
    }

    /// Under `--json`, prints the error line: the text of the `error:` and
    /// `help:` lines and the exit code.
    pub(crate) fn error(&self, error: &str, help: Option<&str>, exit_code: u8) {
        if !self.json {
            return;
        }
        let line = Line {
            kind: "error",
            body: &ErrorLine {
                error,
                help,
                exit_code,
            },
        };
        match serde_json::to_string(&line) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: cannot write the JSON error line: {e}"),
        }
    }
}

/// `keygen`: the new key pair.
#[derive(Serialize)]
pub(crate) struct Key {
    /// The key id, 16 hex digits.
    pub(crate) key_id: String,
    /// The secret key file.
    pub(crate) secret_key: PathBuf,
    /// The public key file.
    pub(crate) public_key: PathBuf,
    /// Whether the secret key is protected by a passphrase.
    pub(crate) encrypted: bool,
}

/// `split`, and `build --volume-size`: the volume set written.
#[derive(Serialize)]
pub(crate) struct Split {
    /// The index file.
    pub(crate) index: PathBuf,
    /// The file name of the bundle the volumes make up.
    pub(crate) bundle: String,
    /// SHA-256 of the whole bundle.
    pub(crate) sha256: String,
    /// Size of the whole bundle, in bytes.
    pub(crate) size: u64,
    /// Number of volumes.
    pub(crate) volumes: usize,
    /// Number of parity volumes.
    pub(crate) parity_volumes: usize,
    /// Largest volume, in bytes.
    pub(crate) volume_size: u64,
}

/// `join`: the bundle file written.
#[derive(Serialize)]
pub(crate) struct Joined {
    /// The new bundle file.
    pub(crate) bundle: PathBuf,
    /// Number of volumes joined.
    pub(crate) volumes: usize,
    /// SHA-256 of the bundle.
    pub(crate) sha256: String,
    /// Its size, in bytes.
    pub(crate) size: u64,
}

/// `sign`: the signed bundle.
#[derive(Serialize)]
pub(crate) struct Signed {
    /// The bundle file written.
    pub(crate) bundle: PathBuf,
    /// The bundle read: the same file when signed in place.
    pub(crate) source: PathBuf,
    /// The key that signed now.
    pub(crate) key_id: String,
    /// The key id of every signature the bundle now carries.
    pub(crate) signatures: Vec<String>,
}

/// `trust new`: the unsigned trust update written.
#[derive(Serialize)]
pub(crate) struct TrustUpdate {
    /// The trust update file.
    pub(crate) file: PathBuf,
    /// Its trust version.
    pub(crate) version: u64,
    /// How many distinct keys must sign.
    pub(crate) threshold: usize,
    /// The key ids of the keys it trusts.
    pub(crate) keys: Vec<String>,
    /// When it was made, Unix seconds.
    pub(crate) created_at: u64,
    /// `created_at` as RFC 3339.
    pub(crate) created_at_rfc3339: String,
    /// When sites stop accepting bundles until a newer update, Unix seconds.
    pub(crate) expires_at: Option<u64>,
    /// `expires_at` as RFC 3339.
    pub(crate) expires_at_rfc3339: Option<String>,
}

/// `trust sign`: the signed trust update.
#[derive(Serialize)]
pub(crate) struct TrustSigned {
    /// The trust update file written.
    pub(crate) file: PathBuf,
    /// The file read: the same file when signed in place.
    pub(crate) source: PathBuf,
    /// Its trust version.
    pub(crate) version: u64,
    /// The key that signed now.
    pub(crate) key_id: String,
    /// The key id of every signature it now carries.
    pub(crate) signatures: Vec<String>,
}

/// `manpages`: the folder written.
#[derive(Serialize)]
pub(crate) struct Manpages {
    /// The folder.
    pub(crate) dir: PathBuf,
}
