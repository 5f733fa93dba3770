//! Ed25519 keys and signatures in minisign's text formats
//! (<https://jedisct1.github.io/minisign/>, "Signature format").
//!
//! Signatures are the prehashed `ED` kind: Ed25519 over the BLAKE2b-512 digest
//! of the signed bytes, plus a global signature over the signature and its
//! trusted comment. Ed25519 signing is deterministic (RFC 8032), so the same key,
//! bytes and comment always give the same signature text, which keeps builds
//! reproducible. Secret key files are minisign's, read and written by the
//! `minisign` crate (scrypt-protected unless made unencrypted).

use std::collections::BTreeSet;
use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use blake2::{Blake2b512, Digest as _};
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};

use crate::error::SignatureError;

const SIG_ALG: [u8; 2] = *b"Ed";
const SIG_ALG_PREHASHED: [u8; 2] = *b"ED";
const KEYNUM_BYTES: usize = 8;
const UNTRUSTED_PREFIX: &str = "untrusted comment: ";
const TRUSTED_PREFIX: &str = "trusted comment: ";

/// A key id: 8 bytes, shown as minisign shows it (16 uppercase hex digits of
/// the little-endian number).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KEYNUM_BYTES]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

fn format_err(what: &'static str, reason: impl Into<String>) -> SignatureError {
    SignatureError::Format {
        what,
        reason: reason.into(),
    }
}

/// The base64 line of a minisign text: the first line that is not a comment.
/// A line as minisign reads it: up to its first `\r`.
fn cut_at_cr(line: &str) -> &str {
    line.split('\r').next().unwrap_or_default()
}

fn key_line<'a>(text: &'a str, what: &'static str) -> Result<&'a str, SignatureError> {
    text.lines()
        .map(|l| cut_at_cr(l).trim())
        .find(|l| !l.is_empty() && !l.starts_with(UNTRUSTED_PREFIX))
        .ok_or_else(|| format_err(what, "no key line"))
}

/// A public key that may sign bundles.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key_id: KeyId,
    key: VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id)
    }
}

impl PublicKey {
    /// Parses a minisign public key: a `.pub` file's text, or its base64 line alone.
    ///
    /// # Errors
    /// [`SignatureError::Format`] when the text is not an Ed25519 minisign key.
    pub fn from_minisign(text: &str) -> Result<Self, SignatureError> {
        const WHAT: &str = "public key";
        let line = key_line(text, WHAT)?;
        let bytes = BASE64
            .decode(line)
            .map_err(|e| format_err(WHAT, format!("bad base64: {e}")))?;
        if bytes.len() != 2 + KEYNUM_BYTES + 32 || bytes[..2] != SIG_ALG {
            return Err(format_err(
                WHAT,
                "expected `Ed`, an 8-byte key id and 32 key bytes",
            ));
        }
        let mut key_id = [0u8; KEYNUM_BYTES];
        key_id.copy_from_slice(&bytes[2..10]);
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[10..]);
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|e| format_err(WHAT, format!("not an Ed25519 point: {e}")))?;
        Ok(Self {
            key_id: KeyId(key_id),
            key,
        })
    }

    /// The key in minisign's `.pub` file format.
    pub fn to_minisign(&self) -> String {
        format!(
            "{UNTRUSTED_PREFIX}minisign public key {}\n{}\n",
            self.key_id,
            self.to_line()
        )
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The key's base64 line alone, as a `.pub` file's second line.
    pub fn to_line(&self) -> String {
        let mut bytes = Vec::with_capacity(42);
        bytes.extend_from_slice(&SIG_ALG);
        bytes.extend_from_slice(&self.key_id.0);
        bytes.extend_from_slice(self.key.as_bytes());
        BASE64.encode(bytes)
    }
}

/// A decrypted secret key, able to sign.
pub struct SecretKey {
    key_id: KeyId,
    key: SigningKey,
}

/// A new key pair: the secret key file's text and the public key.
pub struct GeneratedKey {
    /// Text of the secret key file (minisign format; encrypted when a passphrase was given).
    pub secret_text: String,
    /// The public key.
    pub public: PublicKey,
}

impl SecretKey {
    /// Generates a key pair; the secret key is scrypt-protected by `passphrase`
    /// unless it is `None`.
    ///
    /// # Errors
    /// [`SignatureError::SecretKey`] when the system's random source fails.
    pub fn generate(passphrase: Option<String>) -> Result<GeneratedKey, SignatureError> {
        let err = |e: minisign::PError| SignatureError::SecretKey(e.to_string());
        let pair = match passphrase {
            Some(p) => minisign::KeyPair::generate_encrypted_keypair(Some(p)).map_err(err)?,
            None => minisign::KeyPair::generate_unencrypted_keypair().map_err(err)?,
        };
        let public = PublicKey::from_minisign(&pair.pk.to_box().map_err(err)?.into_string())?;
        let secret_text = pair
            .sk
            .to_box(Some(&format!("airlock secret key {}", public.key_id)))
            .map_err(err)?
            .into_string();
        Ok(GeneratedKey {
            secret_text,
            public,
        })
    }

    /// Whether a secret key file's text is passphrase-protected.
    ///
    /// # Errors
    /// [`SignatureError::Format`] when the text is not a minisign secret key.
    pub fn is_encrypted(text: &str) -> Result<bool, SignatureError> {
        let bytes = BASE64
            .decode(key_line(text, "secret key")?)
            .map_err(|e| format_err("secret key", format!("bad base64: {e}")))?;
        match bytes.get(2..4) {
            Some([0, 0]) => Ok(false),
            Some(b"Sc") => Ok(true),
            _ => Err(format_err("secret key", "unknown key derivation algorithm")),
        }
    }

    /// Opens a minisign secret key file's text; `passphrase` is needed when it is encrypted.
    ///
    /// # Errors
    /// [`SignatureError::SecretKey`] for a wrong passphrase or a damaged key.
    pub fn from_minisign(text: &str, passphrase: Option<String>) -> Result<Self, SignatureError> {
        let err = |e: minisign::PError| SignatureError::SecretKey(e.to_string());
        let boxed = minisign::SecretKeyBox::from_string(text).map_err(err)?;
        let sk = if Self::is_encrypted(text)? {
            let passphrase = passphrase.ok_or_else(|| {
                SignatureError::SecretKey("the key is encrypted and no passphrase was given".into())
            })?;
            boxed
                .into_secret_key(Some(passphrase))
                .map_err(|e| match e.kind() {
                    minisign::ErrorKind::Verify => {
                        SignatureError::SecretKey("wrong passphrase for this key".into())
                    }
                    _ => err(e),
                })?
        } else {
            // minisign 0.11's `-G -W` leaves the checksum of an unencrypted
            // key zero and never checks it (src/minisign.c, `generate` and
            // `seckey_load`), so neither does this: the key must instead
            // carry the public half its seed derives.
            return Self::from_unencrypted(text);
        };
        // minisign's layout: sig_alg(2) kdf_alg(2) chk_alg(2) salt(32) ops(8)
        // mem(8) keynum(8) secret key(64 = seed 32 + public 32) checksum(32).
        let bytes = sk.to_bytes();
        let (Some(keynum), Some(seed)) = (bytes.get(54..62), bytes.get(62..94)) else {
            return Err(SignatureError::SecretKey("secret key is too short".into()));
        };
        let mut id = [0u8; KEYNUM_BYTES];
        id.copy_from_slice(keynum);
        let mut s = [0u8; 32];
        s.copy_from_slice(seed);
        Ok(Self {
            key_id: KeyId(id),
            key: SigningKey::from_bytes(&s),
        })
    }

    /// Reads an unencrypted minisign secret key as minisign does: `Ed`,
    /// no key derivation, `B2`, 158 bytes; the checksum is not read (minisign
    /// writes zeros there), the public half must match the seed.
    fn from_unencrypted(text: &str) -> Result<Self, SignatureError> {
        let bytes = BASE64
            .decode(key_line(text, "secret key")?)
            .map_err(|e| format_err("secret key", format!("bad base64: {e}")))?;
        if bytes.len() != 158 || &bytes[0..2] != b"Ed" || &bytes[4..6] != b"B2" {
            return Err(SignatureError::SecretKey(
                "not an Ed25519 minisign secret key of 158 bytes".into(),
            ));
        }
        let mut id = [0u8; KEYNUM_BYTES];
        id.copy_from_slice(&bytes[54..62]);
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&bytes[62..94]);
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes()[..] != bytes[94..126] {
            return Err(SignatureError::SecretKey(
                "Corrupted key: its public half is not the one its secret half derives".into(),
            ));
        }
        Ok(Self {
            key_id: KeyId(id),
            key,
        })
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// Signs `data` (prehashed `ED` signature) with `trusted_comment` (one line).
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> Signature {
        let trusted_comment = trusted_comment.replace(['\n', '\r'], " ");
        let sig = self.key.sign(&Blake2b512::digest(data));
        let mut global = sig.to_bytes().to_vec();
        global.extend_from_slice(trusted_comment.as_bytes());
        let global_sig = self.key.sign(&global);
        Signature {
            key_id: self.key_id,
            untrusted_comment: format!("signature from airlock secret key {}", self.key_id),
            signature: sig.to_bytes(),
            trusted_comment,
            global_signature: global_sig.to_bytes(),
        }
    }
}

/// A minisign signature (a `.minisig` file's contents).
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    key_id: KeyId,
    untrusted_comment: String,
    signature: [u8; 64],
    trusted_comment: String,
    global_signature: [u8; 64],
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.key_id)
    }
}

impl Signature {
    /// Parses a `.minisig` text: untrusted comment, signature line, trusted
    /// comment, global signature line. Only prehashed (`ED`) signatures are accepted.
    ///
    /// # Errors
    /// [`SignatureError::Format`] naming what is wrong.
    pub fn from_minisign(text: &str) -> Result<Self, SignatureError> {
        const WHAT: &str = "signature";
        let mut lines = text.lines();
        // minisign reads each line with fgets and cuts it at its first `\r`
        // or `\n` (src/minisign.c, `trim`): `abc\rX` is the comment `abc`.
        let mut next = |name: &str| {
            lines
                .next()
                .map(cut_at_cr)
                .ok_or_else(|| format_err(WHAT, format!("missing {name} line")))
        };
        let untrusted_comment = next("untrusted comment")?
            .strip_prefix(UNTRUSTED_PREFIX)
            .ok_or_else(|| format_err(WHAT, "first line is not an untrusted comment"))?
            .to_owned();
        let sig = BASE64
            .decode(next("signature")?.trim())
            .map_err(|e| format_err(WHAT, format!("bad base64: {e}")))?;
        let trusted_comment = next("trusted comment")?
            .strip_prefix(TRUSTED_PREFIX)
            .ok_or_else(|| format_err(WHAT, "third line is not a trusted comment"))?
            .to_owned();
        let global = BASE64
            .decode(next("global signature")?.trim())
            .map_err(|e| format_err(WHAT, format!("bad base64: {e}")))?;
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(format_err(WHAT, "text after the global signature"));
        }
        if sig.len() != 2 + KEYNUM_BYTES + 64 {
            return Err(format_err(WHAT, "signature line has the wrong length"));
        }
        if sig[..2] != SIG_ALG_PREHASHED {
            return Err(format_err(
                WHAT,
                "only prehashed (`ED`) signatures are accepted; sign with minisign 0.8 or later",
            ));
        }
        let mut key_id = [0u8; KEYNUM_BYTES];
        key_id.copy_from_slice(&sig[2..10]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&sig[10..]);
        let global_signature: [u8; 64] = global
            .as_slice()
            .try_into()
            .map_err(|_| format_err(WHAT, "global signature has the wrong length"))?;
        Ok(Self {
            key_id: KeyId(key_id),
            untrusted_comment,
            signature,
            trusted_comment,
            global_signature,
        })
    }

    /// The `.minisig` text.
    pub fn to_minisign(&self) -> String {
        let mut sig = Vec::with_capacity(74);
        sig.extend_from_slice(&SIG_ALG_PREHASHED);
        sig.extend_from_slice(&self.key_id.0);
        sig.extend_from_slice(&self.signature);
        format!(
            "{UNTRUSTED_PREFIX}{}\n{}\n{TRUSTED_PREFIX}{}\n{}\n",
            self.untrusted_comment,
            BASE64.encode(sig),
            self.trusted_comment,
            BASE64.encode(self.global_signature)
        )
    }

    /// The id of the key that made this signature.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The trusted (signed) comment.
    pub fn trusted_comment(&self) -> &str {
        &self.trusted_comment
    }

    /// Checks this signature over `data` with `key`, including the trusted comment.
    ///
    /// # Errors
    /// [`SignatureError::Mismatch`] when the key ids differ or either signature fails.
    pub fn verify(&self, key: &PublicKey, data: &[u8]) -> Result<(), SignatureError> {
        let mismatch = || SignatureError::Mismatch {
            key_id: self.key_id.to_string(),
        };
        if self.key_id != key.key_id {
            return Err(mismatch());
        }
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature);
        key.key
            .verify(&Blake2b512::digest(data), &sig)
            .map_err(|_| mismatch())?;
        let mut global = self.signature.to_vec();
        global.extend_from_slice(self.trusted_comment.as_bytes());
        let global_sig = ed25519_dalek::Signature::from_bytes(&self.global_signature);
        key.key.verify(&global, &global_sig).map_err(|_| mismatch())
    }
}

/// The keys a site trusts and how many of them must sign.
#[derive(Debug, Clone)]
pub struct Trust {
    keys: Vec<PublicKey>,
    threshold: usize,
}

impl Trust {
    /// A trust set. `threshold` is at least 1 and at most the number of distinct keys.
    ///
    /// # Errors
    /// A message when the threshold cannot be met by these keys.
    pub fn new(keys: Vec<PublicKey>, threshold: usize) -> Result<Self, String> {
        let distinct: BTreeSet<KeyId> = keys.iter().map(|k| k.key_id).collect();
        if threshold == 0 {
            return Err("threshold must be at least 1".into());
        }
        if threshold > distinct.len() {
            return Err(format!(
                "threshold {threshold} is more than the {} distinct trusted key(s)",
                distinct.len()
            ));
        }
        Ok(Self { keys, threshold })
    }

    /// A trust that accepts nothing: no keys, threshold 1, which no set of
    /// signatures can meet. For commands that read a site's state but
    /// verify nothing when its trusted keys cannot be read.
    pub fn nothing() -> Self {
        Self {
            keys: Vec::new(),
            threshold: 1,
        }
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// The number of distinct keys that must sign.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Checks `signatures` over `data`: each trusted key id counts at most once
    /// (as tough does in `schema/verify.rs`), untrusted and bad signatures count
    /// for nothing. Returns the key ids that counted, sorted.
    ///
    /// # Errors
    /// [`SignatureError::Threshold`] listing why each other signature did not count.
    pub fn check(
        &self,
        data: &[u8],
        signatures: &[Signature],
    ) -> Result<Vec<KeyId>, SignatureError> {
        let mut valid = BTreeSet::new();
        let mut notes = Vec::new();
        for sig in signatures {
            match self.keys.iter().find(|k| k.key_id == sig.key_id) {
                None => notes.push(format!("key {} is not trusted by this site", sig.key_id)),
                Some(key) => match sig.verify(key, data) {
                    Ok(()) => {
                        if !valid.insert(sig.key_id) {
                            notes.push(format!(
                                "key {} signed more than once and counts once",
                                sig.key_id
                            ));
                        }
                    }
                    Err(e) => notes.push(e.to_string()),
                },
            }
        }
        if valid.len() >= self.threshold {
            Ok(valid.into_iter().collect())
        } else {
            let detail = if signatures.is_empty() {
                " (it carries no signature; a bundle built with `airlock-build build --unsigned` is signed with `airlock-build sign BUNDLE --key KEY --out SIGNED`)".to_string()
            } else if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join("; "))
            };
            Err(SignatureError::Threshold {
                valid: valid.len(),
                threshold: self.threshold,
                detail,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        let generated = SecretKey::generate(None).unwrap();
        SecretKey::from_minisign(&generated.secret_text, None).unwrap()
    }

    #[test]
    fn sign_and_verify_round_trip_through_text() {
        let sk = key();
        let pk = PublicKey::from_minisign(&sk.public_key().to_minisign()).unwrap();
        assert_eq!(pk.key_id(), sk.key_id());
        let sig = sk.sign(b"manifest", "timestamp:1\tfile:x.airlock");
        let parsed = Signature::from_minisign(&sig.to_minisign()).unwrap();
        assert_eq!(parsed, sig);
        parsed.verify(&pk, b"manifest").unwrap();
        assert!(parsed.verify(&pk, b"manifesT").is_err());
    }

    /// `minisign -G -W` (minisign 0.11, Debian): an unencrypted key whose
    /// checksum minisign leaves zero.
    const MINISIGN_W_SECRET: &str = "untrusted comment: minisign encrypted secret key\nRWQAAEIyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAzMLzLOFa2sCt47cKXBaxAmGpLZfuMUQGYXVRhgBtqaowQGKJlPaz871uXXyctlBMMyRLM4jX7HEl+uxjz4UT8vP55SAU6djdAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
    const MINISIGN_W_PUBLIC: &str = "untrusted comment: minisign public key C0DA5AE12CF3C2CC\nRWTMwvMs4VrawL1uXXyctlBMMyRLM4jX7HEl+uxjz4UT8vP55SAU6djd\n";

    #[test]
    fn an_unencrypted_key_of_minisign_w_signs() {
        let sk = SecretKey::from_minisign(MINISIGN_W_SECRET, None).unwrap();
        let pk = PublicKey::from_minisign(MINISIGN_W_PUBLIC).unwrap();
        assert_eq!(sk.key_id(), pk.key_id());
        sk.sign(b"manifest", "c").verify(&pk, b"manifest").unwrap();
        // A public half that is not the seed's is refused.
        let mut bytes = BASE64
            .decode(MINISIGN_W_SECRET.lines().nth(1).unwrap())
            .unwrap();
        bytes[100] ^= 1;
        let damaged = format!("untrusted comment: x\n{}\n", BASE64.encode(&bytes));
        let err = SecretKey::from_minisign(&damaged, None).err().unwrap();
        assert!(err.to_string().contains("Corrupted key"), "{err}");
    }

    #[test]
    fn a_carriage_return_ends_a_line_as_in_minisign() {
        // Checked against minisign 0.11: a trusted comment line `abc\rX`
        // verifies as the comment `abc` (found by the `signature` fuzz target).
        let sk = key();
        let text = sk.sign(b"data", "abc").to_minisign();
        let altered = text.replace("trusted comment: abc\n", "trusted comment: abc\r\rX\n");
        assert_ne!(altered, text);
        let sig = Signature::from_minisign(&altered).unwrap();
        assert_eq!(sig.trusted_comment(), "abc");
        sig.verify(&sk.public_key(), b"data").unwrap();
        assert_eq!(sig.to_minisign(), text);
    }

    #[test]
    fn signatures_are_deterministic() {
        let sk = key();
        assert_eq!(
            sk.sign(b"m", "c").to_minisign(),
            sk.sign(b"m", "c").to_minisign()
        );
    }

    #[test]
    fn minisign_itself_accepts_our_signatures() {
        let sk = key();
        let sig = sk.sign(b"hello", "timestamp:0");
        let pk = minisign::PublicKeyBox::from_string(&sk.public_key().to_minisign())
            .unwrap()
            .into_public_key()
            .unwrap();
        let sig_box = minisign::SignatureBox::from_string(&sig.to_minisign()).unwrap();
        minisign::verify(
            &pk,
            &sig_box,
            std::io::Cursor::new(b"hello"),
            true,
            false,
            false,
        )
        .unwrap();
        assert!(minisign::verify(
            &pk,
            &sig_box,
            std::io::Cursor::new(b"hellO"),
            true,
            false,
            false
        )
        .is_err());
    }

    #[test]
    fn encrypted_key_needs_the_passphrase() {
        let generated = SecretKey::generate(Some("correct horse".into())).unwrap();
        assert!(SecretKey::is_encrypted(&generated.secret_text).unwrap());
        assert!(SecretKey::from_minisign(&generated.secret_text, Some("wrong".into())).is_err());
        assert!(SecretKey::from_minisign(&generated.secret_text, None).is_err());
        let sk =
            SecretKey::from_minisign(&generated.secret_text, Some("correct horse".into())).unwrap();
        assert_eq!(sk.public_key(), generated.public);
    }

    #[test]
    fn a_key_counts_once_toward_the_threshold() {
        let (a, b, stranger) = (key(), key(), key());
        let trust = Trust::new(vec![a.public_key(), b.public_key()], 2).unwrap();
        let data = b"m";
        let twice = [a.sign(data, "c"), a.sign(data, "d")];
        let err = trust.check(data, &twice).unwrap_err().to_string();
        assert!(
            err.contains("signed by 1 trusted key(s), the threshold is 2"),
            "{err}"
        );
        assert!(trust
            .check(data, &[a.sign(data, "c"), stranger.sign(data, "c")])
            .is_err());
        let ok = trust
            .check(data, &[a.sign(data, "c"), b.sign(data, "c")])
            .unwrap();
        assert_eq!(ok.len(), 2);
        assert!(Trust::new(vec![a.public_key()], 2).is_err());
    }
}
