//! Paths inside a bundle, validated when they are parsed.
//!
//! A [`BundlePath`] can only hold a relative path made of normal components
//! separated by `/`: no absolute path, no `.` or `..`, no empty component, no
//! backslash and no NUL. Holding one is the proof that it stays inside the
//! folder it is joined to (the idea of tough's `TargetName`).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::PathError;

/// Longest path accepted, in bytes (a Linux `PATH_MAX` is 4096).
pub const MAX_PATH_LEN: usize = 1024;

/// A relative, normalised path of a payload entry, such as `bin/etcd` or
/// `migrations/main/0001_init.sql`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BundlePath(String);

impl BundlePath {
    /// Parses `s`, refusing anything that could leave the folder it is joined to.
    ///
    /// # Errors
    /// [`PathError`] naming the path and the rule it breaks.
    pub fn parse(s: &str) -> Result<Self, PathError> {
        let bad = |reason: &'static str| PathError {
            path: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("the path is empty"));
        }
        if s.len() > MAX_PATH_LEN {
            return Err(bad("the path is longer than 1024 bytes"));
        }
        if s.starts_with('/') {
            return Err(bad("absolute paths are not allowed"));
        }
        if s.contains('\\') {
            return Err(bad("backslashes are not allowed"));
        }
        if s.contains('\0') {
            return Err(bad("NUL bytes are not allowed"));
        }
        if !crate::shown::is_safe(s) {
            return Err(bad("control characters are not allowed"));
        }
        for component in s.split('/') {
            match component {
                "" => return Err(bad("empty path components are not allowed")),
                "." => return Err(bad("`.` components are not allowed")),
                ".." => return Err(bad("`..` components are not allowed")),
                _ => {}
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// Parses a path as the tar crate reports it, from a payload entry header.
    ///
    /// # Errors
    /// [`PathError`] when the bytes are not UTF-8 or break a rule of [`BundlePath::parse`].
    pub fn from_tar_bytes(bytes: &[u8]) -> Result<Self, PathError> {
        let s = std::str::from_utf8(bytes).map_err(|_| PathError {
            path: String::from_utf8_lossy(bytes).into_owned(),
            reason: "the path is not UTF-8",
        })?;
        Self::parse(s)
    }

    /// The path as text, with `/` separators.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `root` joined with this path; always a path below `root`.
    pub fn join_to(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }

    /// The last component, e.g. `etcd` for `bin/etcd`.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for BundlePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for BundlePath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for BundlePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_relative_paths() {
        for ok in ["bin/etcd", "a", "migrations/main/0001_init.sql", "x..y/z"] {
            assert_eq!(BundlePath::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_escaping_paths() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a/./b",
            "a//b",
            "a/",
            ".",
            "..",
            "a\\b",
            "a\0b",
        ] {
            assert!(BundlePath::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn join_stays_below_root() {
        let p = BundlePath::parse("bin/etcd").unwrap();
        assert_eq!(p.join_to(Path::new("/stage")), Path::new("/stage/bin/etcd"));
        assert_eq!(p.file_name(), "etcd");
    }

    proptest::proptest! {
        /// Whatever `parse` accepts, made of any characters and `/`, `.`,
        /// `..` pieces, joins below its root with normal components only
        /// (the promise of the module doc), and parses back to itself.
        #[test]
        fn an_accepted_path_always_joins_below_its_root(
            s in r"(/|\.|\.\.|[^/]{0,6}){0,12}",
            root in r"/[a-z]{1,8}(/[a-z.]{1,8}){0,3}",
        ) {
            if let Ok(path) = BundlePath::parse(&s) {
                let root = Path::new(&root);
                let joined = path.join_to(root);
                proptest::prop_assert!(joined.starts_with(root));
                let below = joined.strip_prefix(root).map_err(|e| {
                    proptest::test_runner::TestCaseError::fail(e.to_string())
                })?;
                proptest::prop_assert!(below
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))));
                proptest::prop_assert_eq!(
                    below.components().count(),
                    path.as_str().split('/').count()
                );
                proptest::prop_assert_eq!(BundlePath::parse(path.as_str()).ok(), Some(path.clone()));
            }
        }
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<BundlePath>("\"../etc\"").is_err());
        assert!(serde_json::from_str::<BundlePath>("\"bin/ok\"").is_ok());
    }
}
