//! Reads a migration folder as the service's own migration tool reads it
//! (docs/FORMAT.md, "`[[migrations]]`" and "Migration tools"): which entries
//! are migrations, their versions, and whether each runs in a transaction.
//! The tool is declared in the spec or detected from the layout.
//!
//! Where a tool would go on silently with something a release engineer did
//! not mean (diesel keeps one of two folders with the same version and
//! drops the other; sqlx fails half way through a run on the second), the
//! build stops instead and names both files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use airlock_formats::migration::{sqlx_checksum, sqlx_no_transaction, NameRule};
use airlock_formats::{Direction, MigrationTool, MigrationVersion};

use crate::error::BuildError;

/// One migration script found in a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundMigration {
    /// The file on disk.
    pub source: PathBuf,
    /// Path below the migrations folder, `/`-separated, kept in the payload:
    /// the file name, or `FOLDER/up.sql` for diesel.
    pub relative: String,
    /// The version as the tool compares and records it.
    pub version: MigrationVersion,
    /// The tool's description.
    pub description: String,
    /// Up or down.
    pub direction: Direction,
    /// Whether the tool runs it in a transaction of its own.
    pub transaction: bool,
    /// sqlx only: the SHA-384 of the file, hex.
    pub checksum: Option<String>,
}

/// A migration folder read by its tool's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFolder {
    /// The tool; `None` for a folder without migrations.
    pub tool: Option<MigrationTool>,
    /// How the tool was chosen: `declared`, or what was detected.
    pub chosen_by: String,
    /// The migrations, in the tool's order, `up` before `down`.
    pub migrations: Vec<FoundMigration>,
    /// Entries the tool skips, as it would (a README, an empty folder).
    pub ignored: Vec<PathBuf>,
}

fn bad(path: &Path, reason: impl Into<String>) -> BuildError {
    BuildError::Migration {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// One entry of the folder, links followed as the tools follow them.
struct Entry {
    path: PathBuf,
    name: String,
    is_dir: bool,
    is_file: bool,
}

fn entries(dir: &Path) -> Result<Vec<Entry>, BuildError> {
    // BuildError::Migration names the folder; fs-err would name it twice.
    #[allow(clippy::disallowed_methods)]
    let read = std::fs::read_dir(dir).map_err(|e| bad(dir, e.to_string()))?;
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| bad(dir, e.to_string()))?;
        let path = entry.path();
        #[allow(clippy::disallowed_methods)]
        let meta = std::fs::metadata(&path).map_err(|e| bad(&path, e.to_string()))?;
        out.push(Entry {
            name: entry.file_name().to_string_lossy().into_owned(),
            is_dir: meta.is_dir(),
            is_file: meta.is_file(),
            path,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn read_text(path: &Path, tool: MigrationTool) -> Result<String, BuildError> {
    #[allow(clippy::disallowed_methods)]
    let bytes = std::fs::read(path).map_err(|e| bad(path, e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| {
        bad(
            path,
            format!("is not UTF-8 text, which {tool} needs to run it"),
        )
    })
}

/// Which tool's layout `dir` has: folders holding `up.sql` are diesel's;
/// files `V_NAME.sql` without `.up`/`.down` only sqlx reads; files
/// `V_NAME.up.EXT` with an extension other than `.sql` only golang-migrate
/// reads. Files `V_NAME.up.sql`/`.down.sql` alone are read by both sqlx and
/// golang-migrate, which run them differently, so the spec must say which.
fn detect(dir: &Path, all: &[Entry]) -> Result<Option<(MigrationTool, String)>, BuildError> {
    let mut diesel = None;
    let mut sqlx_only = None;
    let mut golang_only = None;
    let mut both = None;
    for e in all {
        if e.is_dir {
            if !e.name.starts_with('.') && e.path.join("up.sql").is_file() {
                diesel.get_or_insert(&e.name);
            }
            continue;
        }
        if !e.is_file {
            continue;
        }
        let sqlx = matches!(
            MigrationTool::Sqlx.read_name(None, &e.name),
            NameRule::Migration(_)
        );
        let golang = matches!(
            MigrationTool::GolangMigrate.read_name(None, &e.name),
            NameRule::Migration(_)
        );
        match (sqlx, golang) {
            (true, true) => both.get_or_insert(&e.name),
            (true, false) => sqlx_only.get_or_insert(&e.name),
            (false, true) => golang_only.get_or_insert(&e.name),
            (false, false) => continue,
        };
    }
    let declare = "declare the tool with `tool = \"diesel\"`, `\"sqlx\"` or `\"golang-migrate\"` in this [[migrations]] entry";
    let files = sqlx_only.or(golang_only).or(both);
    Ok(match (diesel, sqlx_only, golang_only, both) {
        (Some(folder), ..) => {
            if let Some(file) = files {
                return Err(bad(
                    dir,
                    format!("holds both diesel folders (`{folder}`) and migration files (`{file}`); {declare}"),
                ));
            }
            Some((MigrationTool::Diesel, format!("detected: folder `{folder}` holds up.sql")))
        }
        (None, Some(s), Some(g), _) => {
            return Err(bad(
                dir,
                format!("`{s}` is a sqlx name and `{g}` a golang-migrate one; {declare}"),
            ))
        }
        (None, Some(s), None, _) => Some((
            MigrationTool::Sqlx,
            format!("detected: `{s}` has no .up/.down, which only sqlx reads"),
        )),
        (None, None, Some(g), _) => Some((
            MigrationTool::GolangMigrate,
            format!("detected: `{g}` is not .sql, which only golang-migrate reads"),
        )),
        (None, None, None, Some(b)) => {
            return Err(bad(
                dir,
                format!("sqlx and golang-migrate both read `{b}`, and run it differently (sqlx in a transaction, golang-migrate as written); {declare}"),
            ))
        }
        (None, None, None, None) => None,
    })
}

/// How the service sets its tool up, where it differs from the tool's
/// defaults (the spec's `[[migrations]]` keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolSetup {
    /// sqlx: characters its checksums leave out.
    pub ignored_chars: Vec<char>,
    /// golang-migrate: run each script in a transaction.
    pub tx_wrap: bool,
}

/// Reads the migrations of `dir` by the rules of `declared`, or of the tool
/// its layout shows (see the module docs).
///
/// # Errors
/// [`BuildError::Migration`] naming the file or folder: an unreadable
/// folder, a layout no tool or several tools read, a name the tool refuses,
/// two migrations with one version, a diesel folder without `up.sql` or
/// with an empty one, a golang-migrate version with only a down script, or
/// a script that is not UTF-8.
pub fn discover(
    dir: &Path,
    declared: Option<MigrationTool>,
    setup: &ToolSetup,
) -> Result<FoundFolder, BuildError> {
    let all = entries(dir)?;
    let (tool, chosen_by) = match declared {
        Some(tool) => (tool, "declared".to_string()),
        None => match detect(dir, &all)? {
            Some(found) => found,
            None => {
                return Ok(FoundFolder {
                    tool: None,
                    chosen_by: "no migrations".into(),
                    migrations: Vec::new(),
                    ignored: all.into_iter().map(|e| e.path).collect(),
                })
            }
        },
    };
    let mut folder = match tool {
        MigrationTool::Diesel => diesel(&all)?,
        MigrationTool::Sqlx | MigrationTool::GolangMigrate => files(tool, &all, setup)?,
    };
    if !setup.ignored_chars.is_empty() && tool != MigrationTool::Sqlx {
        return Err(bad(
            dir,
            format!("ignored_chars is a sqlx setting; this folder is {tool}'s"),
        ));
    }
    if setup.tx_wrap && tool != MigrationTool::GolangMigrate {
        return Err(bad(
            dir,
            format!("tx_wrap is a golang-migrate setting; this folder is {tool}'s"),
        ));
    }
    let mut seen: BTreeMap<(&MigrationVersion, Direction), &FoundMigration> = BTreeMap::new();
    for m in &folder.migrations {
        if let Some(other) = seen.insert((&m.version, m.direction), m) {
            return Err(bad(
                &m.source,
                format!(
                    "{tool} version {} is used twice (also by `{}`); renumber one of them",
                    m.version,
                    other.source.display()
                ),
            ));
        }
    }
    if tool == MigrationTool::GolangMigrate {
        for m in folder
            .migrations
            .iter()
            .filter(|m| m.direction == Direction::Down)
        {
            if !seen.contains_key(&(&m.version, Direction::Up)) {
                return Err(bad(
                    &m.source,
                    format!("golang-migrate version {} has a down script but no up script; golang-migrate would record the version without running anything, so add the up script or remove this one", m.version),
                ));
            }
        }
    }
    folder
        .migrations
        .sort_by(|a, b| (&a.version, a.direction).cmp(&(&b.version, b.direction)));
    folder.tool = Some(tool);
    folder.chosen_by = chosen_by;
    Ok(folder)
}

/// diesel: every entry that is not a plain file and does not start with
/// `.` is a migration folder, which must hold `up.sql`, an empty folder
/// included (migrations_internals 2.3.0 `migrations_directories`,
/// diesel_migrations 2.3.2 `FileBasedMigrations::from_path`).
/// `metadata.toml` decides the transaction ([`diesel_run_in_transaction`]).
fn diesel(all: &[Entry]) -> Result<FoundFolder, BuildError> {
    let mut out = FoundFolder {
        tool: Some(MigrationTool::Diesel),
        chosen_by: String::new(),
        migrations: Vec::new(),
        ignored: Vec::new(),
    };
    for e in all {
        if e.is_file || e.name.starts_with('.') {
            out.ignored.push(e.path.clone());
            continue;
        }
        if !e.is_dir {
            return Err(bad(&e.path, "is neither a file nor a folder"));
        }
        let inner = entries(&e.path)?;
        let up = e.path.join("up.sql");
        if !up.is_file() {
            return Err(bad(
                &e.path,
                "holds no up.sql; diesel refuses a migration folder without one (UnknownMigrationFormat)",
            ));
        }
        let metadata_path = e.path.join("metadata.toml");
        let metadata = if metadata_path.exists() {
            Some(read_text(&metadata_path, MigrationTool::Diesel)?)
        } else {
            None
        };
        let transaction = diesel_run_in_transaction(metadata.as_deref());
        for file in ["up.sql", "down.sql"] {
            let source = e.path.join(file);
            if !source.is_file() {
                continue;
            }
            let NameRule::Migration(name) = MigrationTool::Diesel.read_name(Some(&e.name), file)
            else {
                continue;
            };
            let sql = read_text(&source, MigrationTool::Diesel)?;
            if file == "up.sql" && sql.is_empty() {
                return Err(bad(
                    &source,
                    "is empty; diesel refuses to run an empty migration (EmptyMigration)",
                ));
            }
            out.migrations.push(FoundMigration {
                source,
                relative: format!("{}/{file}", e.name),
                version: name.version,
                description: name.description,
                direction: name.direction,
                transaction,
                checksum: None,
            });
        }
        for i in inner {
            if !matches!(i.name.as_str(), "up.sql" | "down.sql" | "metadata.toml") {
                out.ignored.push(i.path);
            }
        }
    }
    Ok(out)
}

/// sqlx and golang-migrate: regular files (links followed) whose names the
/// tool reads as migrations; folders and other names are skipped, as the
/// tool skips them.
fn files(tool: MigrationTool, all: &[Entry], setup: &ToolSetup) -> Result<FoundFolder, BuildError> {
    let mut out = FoundFolder {
        tool: Some(tool),
        chosen_by: String::new(),
        migrations: Vec::new(),
        ignored: Vec::new(),
    };
    for e in all {
        if !e.is_file {
            out.ignored.push(e.path.clone());
            continue;
        }
        let name = match tool.read_name(None, &e.name) {
            NameRule::Migration(name) => name,
            NameRule::Ignored => {
                out.ignored.push(e.path.clone());
                continue;
            }
            NameRule::Refused(reason) => return Err(bad(&e.path, reason)),
        };
        if let MigrationVersion::Unsigned(v) = name.version {
            if i64::try_from(v).is_err() {
                return Err(bad(
                    &e.path,
                    format!("version {v} does not fit the signed 64-bit integer golang-migrate records in schema_migrations"),
                ));
            }
        }
        let sql = read_text(&e.path, tool)?;
        let (transaction, checksum) = match tool {
            MigrationTool::Sqlx => (
                !sqlx_no_transaction(&sql),
                Some(hex::encode(sqlx_checksum(&sql, &setup.ignored_chars))),
            ),
            _ => (setup.tx_wrap, None),
        };
        out.migrations.push(FoundMigration {
            source: e.path.clone(),
            relative: e.name.clone(),
            version: name.version,
            description: name.description,
            direction: name.direction,
            transaction,
            checksum,
        });
    }
    Ok(out)
}

/// What diesel makes of a folder's `metadata.toml` (migrations_internals
/// 2.3 `TomlMetadata`, read by `TomlMetadata::read_from_file(..)
/// .unwrap_or_default()`): the field `run_in_transaction` defaults to
/// `false`, but a missing or unreadable file defaults the whole struct to
/// `true`. So no file, a file that is not TOML, or a value that is not a
/// boolean mean `true`; a file without the key, even an empty one, means
/// `false`.
pub fn diesel_run_in_transaction(metadata: Option<&str>) -> bool {
    #[derive(serde::Deserialize)]
    struct TomlMetadata {
        #[serde(default)]
        run_in_transaction: bool,
    }
    match metadata {
        None => true,
        Some(text) => toml::from_str::<TomlMetadata>(text).map_or(true, |m| m.run_in_transaction),
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::fs;

    fn names(found: &FoundFolder) -> Vec<&str> {
        found
            .migrations
            .iter()
            .map(|m| m.relative.as_str())
            .collect()
    }

    #[test]
    fn sqlx_files_in_numeric_order_and_other_files_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("10_add_index.sql"), "x").unwrap();
        fs::write(d.join("9_init.sql"), "-- no-transaction\nVACUUM;").unwrap();
        fs::write(d.join("11_rev.up.sql"), "x").unwrap();
        fs::write(d.join("11_rev.down.sql"), "x").unwrap();
        fs::write(d.join("README.md"), "x").unwrap();
        let found = discover(d, None, &ToolSetup::default()).unwrap();
        assert_eq!(found.tool, Some(MigrationTool::Sqlx));
        assert!(
            found.chosen_by.starts_with("detected"),
            "{}",
            found.chosen_by
        );
        assert_eq!(
            names(&found),
            [
                "9_init.sql",
                "10_add_index.sql",
                "11_rev.up.sql",
                "11_rev.down.sql"
            ]
        );
        assert!(!found.migrations[0].transaction);
        assert!(found.migrations[1].transaction);
        assert_eq!(found.migrations[1].description, "add index");
        assert_eq!(
            found.migrations[0].checksum.as_ref().map(String::len),
            Some(96)
        );
        assert_eq!(found.ignored, [d.join("README.md")]);
    }

    #[test]
    fn diesel_folders_in_text_order_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (folder, meta) in [
            ("2024-03-06-170000_add_sso_users", None),
            (
                "2024-03-13_170000_sso_userscascade",
                Some("run_in_transaction = false\n"),
            ),
            ("2024-06-05-131359_add_2fa", None),
        ] {
            fs::create_dir(d.join(folder)).unwrap();
            fs::write(d.join(folder).join("up.sql"), "x").unwrap();
            fs::write(d.join(folder).join("down.sql"), "x").unwrap();
            if let Some(meta) = meta {
                fs::write(d.join(folder).join("metadata.toml"), meta).unwrap();
            }
        }
        fs::write(d.join("README.md"), "x").unwrap();
        let found = discover(d, None, &ToolSetup::default()).unwrap();
        assert_eq!(found.tool, Some(MigrationTool::Diesel));
        let ups: Vec<_> = found
            .migrations
            .iter()
            .filter(|m| m.direction == Direction::Up)
            .map(|m| (m.version.to_string(), m.transaction))
            .collect();
        assert_eq!(
            ups,
            [
                ("20240306170000".to_string(), true),
                ("20240313".to_string(), false),
                ("20240605131359".to_string(), true)
            ]
        );
        assert_eq!(found.ignored, [d.join("README.md")]);

        // diesel 2.3.2 refuses an empty folder as it refuses one without up.sql.
        fs::create_dir(d.join("2025-01-01-000000_empty")).unwrap();
        let err = discover(d, None, &ToolSetup::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no up.sql"), "{err}");
        fs::remove_dir(d.join("2025-01-01-000000_empty")).unwrap();

        fs::create_dir(d.join("2025-01-01-000000_no_up")).unwrap();
        fs::write(d.join("2025-01-01-000000_no_up/down.sql"), "x").unwrap();
        let err = discover(d, None, &ToolSetup::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no up.sql"), "{err}");
    }

    #[test]
    fn golang_migrate_files_and_ambiguous_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("1_init.up.sql"), "x").unwrap();
        fs::write(d.join("1_init.down.sql"), "x").unwrap();
        let err = discover(d, None, &ToolSetup::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("declare the tool"), "{err}");
        let found = discover(d, Some(MigrationTool::GolangMigrate), &ToolSetup::default()).unwrap();
        assert_eq!(names(&found), ["1_init.up.sql", "1_init.down.sql"]);
        assert!(found.migrations.iter().all(|m| !m.transaction));
        assert_eq!(found.chosen_by, "declared");

        fs::write(d.join("2_more.up.txt"), "x").unwrap();
        let found = discover(d, None, &ToolSetup::default()).unwrap();
        assert_eq!(found.tool, Some(MigrationTool::GolangMigrate));

        fs::write(d.join("3_only.down.sql"), "x").unwrap();
        let err = discover(d, None, &ToolSetup::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no up script"), "{err}");
    }

    #[test]
    fn refuses_duplicate_versions_and_names_the_tool_refuses() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("0001_a.sql"), "x").unwrap();
        fs::write(dir.path().join("1_b.sql"), "x").unwrap();
        let err = discover(dir.path(), None, &ToolSetup::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("used twice"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("2024-01-01_x.sql"), "x").unwrap();
        let err = discover(dir.path(), Some(MigrationTool::Sqlx), &ToolSetup::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected integer version prefix"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("2024-03-13_170000_a")).unwrap();
        fs::write(dir.path().join("2024-03-13_170000_a/up.sql"), "x").unwrap();
        fs::create_dir(dir.path().join("2024-03-13_180000_b")).unwrap();
        fs::write(dir.path().join("2024-03-13_180000_b/up.sql"), "x").unwrap();
        let err = discover(dir.path(), None, &ToolSetup::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("version 20240313 is used twice"), "{err}");
    }

    #[test]
    fn diesel_metadata_toml_is_read_as_diesel_reads_it() {
        assert!(diesel_run_in_transaction(None));
        assert!(!diesel_run_in_transaction(Some("")));
        assert!(!diesel_run_in_transaction(Some("# nothing\nother = 1\n")));
        assert!(!diesel_run_in_transaction(Some(
            "run_in_transaction = false\n"
        )));
        assert!(diesel_run_in_transaction(Some(
            "run_in_transaction = true\n"
        )));
        assert!(diesel_run_in_transaction(Some(
            "run_in_transaction = \"false\"\n"
        )));
        assert!(diesel_run_in_transaction(Some("not toml [")));
    }
}
