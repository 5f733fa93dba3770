//! Reads migration folders as the service's own migration tool wrote them.
//!
//! - sqlx: files `VERSION_DESCRIPTION.sql`, or reversible pairs
//!   `VERSION_DESCRIPTION.up.sql` / `.down.sql`, where VERSION is digits
//!   (sqlx-core `migrate/source.rs`).
//! - diesel: folders `VERSION_DESCRIPTION/` holding `up.sql` and optionally
//!   `down.sql`, where VERSION is digits and dashes such as `2024-02-14-140000`
//!   (diesel_migrations' folder layout).
//!
//! A migration's order key is its version's digits as a number; two
//! migrations of one folder with the same key are refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use airlock_formats::Direction;

use crate::error::BuildError;

/// One migration script found in a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundMigration {
    /// The file on disk.
    pub source: PathBuf,
    /// Path below the migrations folder, `/`-separated, kept in the payload.
    pub relative: String,
    /// Version as written, e.g. `0001` or `2024-02-14-140000`.
    pub version: String,
    /// Digits of the version as a number.
    pub order: u64,
    /// Description, e.g. `add_orders`.
    pub description: String,
    /// Up or down.
    pub direction: Direction,
}

fn split_version(stem: &str) -> Option<(&str, &str, u64)> {
    let (version, description) = stem.split_once('_')?;
    if version.is_empty() || !version.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if !version.chars().all(|c| c.is_ascii_digit() || c == '-') {
        return None;
    }
    let digits: String = version.chars().filter(char::is_ascii_digit).collect();
    let order = digits.parse::<u64>().ok()?;
    Some((version, description, order))
}

/// Lists the migrations of `dir`, ordered by version, `up` before `down`.
///
/// # Errors
/// [`BuildError::Migration`] naming the file for an unreadable folder, a name
/// that is neither sqlx's nor diesel's, or two migrations with the same version.
pub fn discover(dir: &Path) -> Result<Vec<FoundMigration>, BuildError> {
    let bad = |path: &Path, reason: String| BuildError::Migration {
        path: path.to_owned(),
        reason,
    };
    // BuildError::Migration names the folder; fs-err would name it twice.
    #[allow(clippy::disallowed_methods)]
    let read = std::fs::read_dir(dir).map_err(|e| bad(dir, e.to_string()))?;
    let mut found = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| bad(dir, e.to_string()))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let file_type = entry.file_type().map_err(|e| bad(&path, e.to_string()))?;
        if file_type.is_dir() {
            let Some((version, description, order)) = split_version(&name) else {
                return Err(bad(
                    &path,
                    "folder name is not `VERSION_DESCRIPTION` (diesel style)".into(),
                ));
            };
            let up = path.join("up.sql");
            if !up.is_file() {
                return Err(bad(&path, "diesel migration folder has no up.sql".into()));
            }
            for (file, direction) in [("up.sql", Direction::Up), ("down.sql", Direction::Down)] {
                let source = path.join(file);
                if source.is_file() {
                    found.push(FoundMigration {
                        source,
                        relative: format!("{name}/{file}"),
                        version: version.to_owned(),
                        order,
                        description: description.to_owned(),
                        direction,
                    });
                }
            }
        } else if file_type.is_file() {
            let Some(stem) = name.strip_suffix(".sql") else {
                return Err(bad(
                    &path,
                    "not a migration: expected `VERSION_DESCRIPTION.sql`".into(),
                ));
            };
            let (stem, direction) = if let Some(s) = stem.strip_suffix(".up") {
                (s, Direction::Up)
            } else if let Some(s) = stem.strip_suffix(".down") {
                (s, Direction::Down)
            } else {
                (stem, Direction::Up)
            };
            let Some((version, description, order)) = split_version(stem) else {
                return Err(bad(
                    &path,
                    "file name is not `VERSION_DESCRIPTION.sql` (sqlx style)".into(),
                ));
            };
            found.push(FoundMigration {
                source: path.clone(),
                relative: name.clone(),
                version: version.to_owned(),
                order,
                description: description.to_owned(),
                direction,
            });
        } else {
            return Err(bad(&path, "links and special files are not allowed".into()));
        }
    }
    let mut by_key: BTreeMap<(u64, Direction), &FoundMigration> = BTreeMap::new();
    for m in &found {
        if let Some(other) = by_key.insert((m.order, m.direction), m) {
            return Err(bad(
                &m.source,
                format!(
                    "version {} is used twice (also by `{}`); renumber one of them",
                    m.version,
                    other.source.display()
                ),
            ));
        }
    }
    found.sort_by_key(|m| (m.order, m.direction));
    Ok(found)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn reads_sqlx_and_diesel_layouts_in_version_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("0002_add_index.sql"), "x").unwrap();
        fs::write(d.join("0001_init.sql"), "x").unwrap();
        fs::write(d.join("0003_rev.up.sql"), "x").unwrap();
        fs::write(d.join("0003_rev.down.sql"), "x").unwrap();
        fs::write(d.join(".keep"), "").unwrap();
        let found = discover(d).unwrap();
        let names: Vec<_> = found.iter().map(|m| m.relative.as_str()).collect();
        assert_eq!(
            names,
            [
                "0001_init.sql",
                "0002_add_index.sql",
                "0003_rev.up.sql",
                "0003_rev.down.sql"
            ]
        );
        assert_eq!(found[0].order, 1);
        assert_eq!(found[0].description, "init");

        let diesel = tempfile::tempdir().unwrap();
        let m = diesel.path().join("2024-02-14-140000_create_orders");
        fs::create_dir(&m).unwrap();
        fs::write(m.join("up.sql"), "x").unwrap();
        fs::write(m.join("down.sql"), "x").unwrap();
        let found = discover(diesel.path()).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].order, 20240214140000);
        assert_eq!(found[0].version, "2024-02-14-140000");
        assert_eq!(found[0].relative, "2024-02-14-140000_create_orders/up.sql");
        assert_eq!(found[1].direction, Direction::Down);
    }

    #[test]
    fn refuses_duplicate_versions_and_strange_names() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("0001_a.sql"), "x").unwrap();
        fs::write(dir.path().join("1_b.sql"), "x").unwrap();
        let err = discover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("used twice"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("README.md"), "x").unwrap();
        assert!(discover(dir.path()).is_err());
    }
}
