//! Signed trust updates (docs/FORMAT.md, "Trust updates"): how a site's
//! release keys rotate with nothing but files, as TUF's root metadata does.
//!
//! A trust update is one JSON file:
//!
//! ```json
//! {
//!   "format": "airlock-trust-update/1",
//!   "trust": "{\n  \"format\": \"airlock-trust/1\",\n  \"version\": 2, ...}\n",
//!   "signatures": ["untrusted comment: ...\nRUQ...\ntrusted comment: ...\n...\n"]
//! }
//! ```
//!
//! `trust` holds the exact bytes that are signed, a [`TrustDocument`] as
//! JSON; `signatures` are minisign signatures over those bytes. A site
//! accepts an update only when it raises the version, and when both the
//! threshold of the trust in force and the threshold of the update's own
//! keys signed it ([`TrustUpdate::check`]).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::signing::{KeyId, PublicKey, Signature, Trust};

/// `format` of a trust update file.
pub const UPDATE_FORMAT: &str = "airlock-trust-update/1";
/// `format` of the signed trust document.
pub const TRUST_FORMAT: &str = "airlock-trust/1";
/// Largest trust update file read, in bytes.
pub const MAX_UPDATE_SIZE: u64 = 1024 * 1024;
/// Most keys a trust document may list.
pub const MAX_KEYS: usize = 64;

/// A trust update that cannot be used, and why.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrustError {
    /// Not JSON of this format.
    #[error("not a trust update ({UPDATE_FORMAT}): {0}")]
    Json(String),
    /// A rule of the trust document is broken.
    #[error("trust document: {0}")]
    Invalid(String),
    /// A signature text is not minisign's.
    #[error("signature {index}: {reason}")]
    Signature {
        /// Position in `signatures`, from 1.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// Security: the version does not rise.
    #[error("it is trust version {version}, and version {current} is in force here: a trust update must raise the version")]
    NotNewer {
        /// The update's version.
        version: u64,
        /// The version in force.
        current: u64,
    },
    /// Security: too few keys of the trust in force, or of the update's own keys, signed.
    #[error("it is signed by {valid} of the {which} keys, and {threshold} must sign{detail}")]
    Threshold {
        /// `current` (the trust in force) or `new` (the update's own).
        which: &'static str,
        /// Distinct keys whose signature counted.
        valid: usize,
        /// How many must.
        threshold: usize,
        /// Why the other signatures did not count.
        detail: String,
    },
}

/// The signed part of a trust update: the keys a site trusts from this
/// version on, and how many of them must sign a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustDocument {
    /// Always [`TRUST_FORMAT`].
    pub format: String,
    /// Version, from 2 (the site profile's `[trust]` is version 1); each
    /// update must raise it.
    pub version: u64,
    /// Release keys: minisign public key lines (the base64 line of a `.pub`).
    pub keys: Vec<String>,
    /// Distinct keys that must sign a bundle, and the next trust update.
    pub threshold: usize,
    /// When it was made, Unix seconds.
    pub created_at: u64,
    /// After this time, Unix seconds, the site refuses bundles until a newer
    /// trust update is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl TrustDocument {
    /// A document for `keys` and `threshold`.
    ///
    /// # Errors
    /// [`TrustError::Invalid`] when the threshold cannot be met or the version is below 2.
    pub fn new(
        version: u64,
        keys: &[PublicKey],
        threshold: usize,
        created_at: u64,
        expires_at: Option<u64>,
    ) -> Result<Self, TrustError> {
        let doc = Self {
            format: TRUST_FORMAT.into(),
            version,
            keys: keys.iter().map(PublicKey::to_line).collect(),
            threshold,
            created_at,
            expires_at,
        };
        doc.trust()?;
        Ok(doc)
    }

    /// The keys and threshold as a [`Trust`], checking every rule.
    ///
    /// # Errors
    /// [`TrustError::Invalid`] naming the rule.
    pub fn trust(&self) -> Result<Trust, TrustError> {
        let invalid = |r: String| TrustError::Invalid(r);
        if self.format != TRUST_FORMAT {
            return Err(invalid(format!(
                "format `{}` is not `{TRUST_FORMAT}`; use a newer airlock",
                crate::shown::shown(&self.format)
            )));
        }
        if i64::try_from(self.version).is_err() {
            return Err(invalid(format!(
                "version {} is above {} (SQLite's largest integer)",
                self.version,
                i64::MAX
            )));
        }
        if self.version < 2 {
            return Err(invalid(format!(
                "version {} is below 2 (the site profile's [trust] is version 1)",
                self.version
            )));
        }
        if self.keys.is_empty() || self.keys.len() > MAX_KEYS {
            return Err(invalid(format!(
                "it lists {} keys; 1 to {MAX_KEYS} are allowed",
                self.keys.len()
            )));
        }
        let mut keys = Vec::new();
        for (i, line) in self.keys.iter().enumerate() {
            keys.push(
                PublicKey::from_minisign(line).map_err(|e| invalid(format!("keys[{i}]: {e}")))?,
            );
        }
        let distinct: BTreeSet<KeyId> = keys.iter().map(PublicKey::key_id).collect();
        if distinct.len() != keys.len() {
            return Err(invalid("a key is listed twice".into()));
        }
        if let Some(expires) = self.expires_at {
            if expires <= self.created_at {
                return Err(invalid(format!(
                    "expires_at {expires} is not after created_at {}",
                    self.created_at
                )));
            }
        }
        Trust::new(keys, self.threshold).map_err(invalid)
    }

    /// The exact bytes that get signed: pretty JSON and a newline.
    ///
    /// # Errors
    /// [`TrustError::Json`] (not expected for a valid document).
    pub fn to_json(&self) -> Result<String, TrustError> {
        let mut text =
            serde_json::to_string_pretty(self).map_err(|e| TrustError::Json(e.to_string()))?;
        text.push('\n');
        Ok(text)
    }
}

/// A trust update file: the signed document's bytes and their signatures.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustUpdate {
    /// Always [`UPDATE_FORMAT`].
    pub format: String,
    /// The signed bytes: a [`TrustDocument`] as JSON.
    pub trust: String,
    /// minisign signatures over `trust`.
    #[serde(default)]
    pub signatures: Vec<String>,
}

/// Who signed an accepted update.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The document.
    pub document: TrustDocument,
    /// Its keys and threshold.
    pub trust: Trust,
    /// Keys of the trust in force that counted.
    pub current_signers: Vec<KeyId>,
    /// Keys of the update itself that counted.
    pub new_signers: Vec<KeyId>,
}

impl TrustUpdate {
    /// An update of `document` with no signature yet.
    ///
    /// # Errors
    /// [`TrustError`] when the document breaks a rule.
    pub fn unsigned(document: &TrustDocument) -> Result<Self, TrustError> {
        document.trust()?;
        Ok(Self {
            format: UPDATE_FORMAT.into(),
            trust: document.to_json()?,
            signatures: Vec::new(),
        })
    }

    /// Parses an update file's bytes, and its document.
    ///
    /// # Errors
    /// [`TrustError`] naming what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<(Self, TrustDocument), TrustError> {
        if bytes.len() as u64 > MAX_UPDATE_SIZE {
            return Err(TrustError::Json(format!(
                "larger than {MAX_UPDATE_SIZE} bytes"
            )));
        }
        let update: Self =
            serde_json::from_slice(bytes).map_err(|e| TrustError::Json(e.to_string()))?;
        if update.format != UPDATE_FORMAT {
            return Err(TrustError::Json(format!(
                "format `{}`; use a newer airlock",
                crate::shown::shown(&update.format)
            )));
        }
        let (document, _) = update.document()?;
        Ok((update, document))
    }

    /// The signed document, parsed, and its keys and threshold.
    fn document(&self) -> Result<(TrustDocument, Trust), TrustError> {
        let document: TrustDocument =
            serde_json::from_str(&self.trust).map_err(|e| TrustError::Invalid(e.to_string()))?;
        let trust = document.trust()?;
        Ok((document, trust))
    }

    /// The file's bytes: pretty JSON and a newline.
    ///
    /// # Errors
    /// [`TrustError::Json`] (not expected).
    pub fn to_json(&self) -> Result<Vec<u8>, TrustError> {
        let mut out =
            serde_json::to_vec_pretty(self).map_err(|e| TrustError::Json(e.to_string()))?;
        out.push(b'\n');
        Ok(out)
    }

    /// The parsed signatures.
    ///
    /// # Errors
    /// [`TrustError::Signature`] for one that is not minisign's format.
    pub fn signatures(&self) -> Result<Vec<Signature>, TrustError> {
        self.signatures
            .iter()
            .enumerate()
            .map(|(i, text)| {
                Signature::from_minisign(text).map_err(|e| TrustError::Signature {
                    index: i + 1,
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// Adds (or replaces) the signature of `signature`'s key.
    ///
    /// # Errors
    /// [`TrustError::Signature`] when a signature already in the file is damaged.
    pub fn add_signature(&mut self, signature: &Signature) -> Result<(), TrustError> {
        let existing = self.signatures()?;
        let mut kept: Vec<String> = existing
            .iter()
            .zip(&self.signatures)
            .filter(|(s, _)| s.key_id() != signature.key_id())
            .map(|(_, text)| text.clone())
            .collect();
        kept.push(signature.to_minisign());
        self.signatures = kept;
        Ok(())
    }

    /// Whether a site whose trust in force is `current`, version
    /// `current_version`, may accept this update: its version is higher,
    /// and the threshold of `current` and the threshold of its own keys
    /// signed its exact bytes (each key counts once; TUF's rule for a new
    /// root, from tough's `schema/verify.rs`).
    ///
    /// # Errors
    /// [`TrustError::NotNewer`] or [`TrustError::Threshold`].
    pub fn check(&self, current: &Trust, current_version: u64) -> Result<Accepted, TrustError> {
        let (document, trust) = self.document()?;
        if document.version <= current_version {
            return Err(TrustError::NotNewer {
                version: document.version,
                current: current_version,
            });
        }
        let signatures = self.signatures()?;
        let data = self.trust.as_bytes();
        let count = |trust: &Trust, which| {
            trust.check(data, &signatures).map_err(|e| match e {
                crate::SignatureError::Threshold {
                    valid,
                    threshold,
                    detail,
                } => TrustError::Threshold {
                    which,
                    valid,
                    threshold,
                    detail,
                },
                other => TrustError::Invalid(other.to_string()),
            })
        };
        let current_signers = count(current, "current")?;
        let new_signers = count(&trust, "new")?;
        Ok(Accepted {
            document,
            trust,
            current_signers,
            new_signers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SecretKey;

    fn key() -> SecretKey {
        let generated = SecretKey::generate(None).unwrap();
        SecretKey::from_minisign(&generated.secret_text, None).unwrap()
    }

    fn update(version: u64, keys: &[&SecretKey], threshold: usize) -> TrustUpdate {
        let public: Vec<PublicKey> = keys.iter().map(|k| k.public_key()).collect();
        let doc = TrustDocument::new(version, &public, threshold, 100, None).unwrap();
        TrustUpdate::unsigned(&doc).unwrap()
    }

    fn signed(mut u: TrustUpdate, by: &[&SecretKey]) -> TrustUpdate {
        for k in by {
            let sig = k.sign(u.trust.as_bytes(), "trust update");
            u.add_signature(&sig).unwrap();
        }
        let (again, _) = TrustUpdate::from_json(&u.to_json().unwrap()).unwrap();
        again
    }

    #[test]
    fn a_rotation_needs_the_old_threshold_and_the_new_one() {
        let (old_a, old_b, new) = (key(), key(), key());
        let current = Trust::new(vec![old_a.public_key(), old_b.public_key()], 2).unwrap();
        let u = update(2, &[&new], 1);
        // Both old keys and the new one: accepted.
        let ok = signed(u.clone(), &[&old_a, &old_b, &new]);
        let accepted = ok.check(&current, 1).unwrap();
        assert_eq!(accepted.document.version, 2);
        assert_eq!(accepted.new_signers, vec![new.key_id()]);
        // One old key short.
        let short = signed(u.clone(), &[&old_a, &new]);
        assert!(matches!(
            short.check(&current, 1),
            Err(TrustError::Threshold {
                which: "current",
                valid: 1,
                threshold: 2,
                ..
            })
        ));
        // The new key did not sign: nobody showed it holds the new key.
        let unproven = signed(u, &[&old_a, &old_b]);
        assert!(matches!(
            unproven.check(&current, 1),
            Err(TrustError::Threshold {
                which: "new",
                valid: 0,
                ..
            })
        ));
        // Not newer.
        assert!(matches!(
            ok.check(&current, 2),
            Err(TrustError::NotNewer {
                version: 2,
                current: 2
            })
        ));
    }

    #[test]
    fn a_changed_document_no_longer_verifies() {
        let old = key();
        let current = Trust::new(vec![old.public_key()], 1).unwrap();
        let mut u = signed(update(2, &[&old], 1), &[&old]);
        u.trust = u.trust.replace("\"threshold\": 1", "\"threshold\": 1 ");
        assert!(matches!(
            u.check(&current, 1),
            Err(TrustError::Threshold { valid: 0, .. })
        ));
    }

    #[test]
    fn documents_that_break_a_rule_are_refused() {
        let k = key();
        let one = [k.public_key()];
        let twice = [k.public_key(), k.public_key()];
        assert!(TrustDocument::new(1, &one, 1, 0, None).is_err());
        assert!(TrustDocument::new(2, &one, 2, 0, None).is_err());
        assert!(TrustDocument::new(2, &twice, 1, 0, None).is_err());
        assert!(TrustDocument::new(2, &one, 1, 10, Some(5)).is_err());
        assert!(TrustDocument::new(2, &one, 1, 10, Some(20)).is_ok());
        assert!(TrustUpdate::from_json(b"{}").is_err());
    }
}
