//! The naming and ordering rules of the migration tools airlock runs
//! migrations as: diesel, sqlx and golang-migrate (docs/FORMAT.md,
//! "Migration tools"). Each rule here is the tool's own, read from its
//! source; the functions cite the file they follow. How each tool connects,
//! wraps migrations in transactions and records them is the applier's part
//! (`airlock-applier`, `steps::migrate`, and docs/SITE.md, "Migrations").

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

use crate::manifest::Direction;

/// The tool whose rules a database's migrations follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationTool {
    /// diesel_migrations 2.3: a folder `VERSION_NAME/` per migration holding
    /// `up.sql`, and optionally `down.sql` and `metadata.toml`.
    Diesel,
    /// sqlx 0.9 (`sqlx::migrate!`, `sqlx migrate run`): files
    /// `VERSION_DESCRIPTION.sql`, or `.up.sql` and `.down.sql` pairs.
    Sqlx,
    /// golang-migrate v4 with its `sqlite3` driver: files
    /// `VERSION_TITLE.up.EXT` and `VERSION_TITLE.down.EXT`.
    GolangMigrate,
}

impl MigrationTool {
    /// Every tool, in the order docs list them.
    pub const ALL: [Self; 3] = [Self::Diesel, Self::Sqlx, Self::GolangMigrate];

    /// The tool's name as specs, manifests and reports write it: `diesel`,
    /// `sqlx` or `golang-migrate`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Diesel => "diesel",
            Self::Sqlx => "sqlx",
            Self::GolangMigrate => "golang-migrate",
        }
    }

    /// The table the tool records applied migrations in by default, which
    /// the service's own migrator reads: `__diesel_schema_migrations`
    /// (diesel `migration/setup_migration_table.sql`), `_sqlx_migrations`
    /// (sqlx-core `migrate/migrator.rs`, the default table name) or
    /// `schema_migrations` (golang-migrate `database/sqlite3/sqlite3.go`,
    /// `DefaultMigrationsTable`).
    pub fn history_table(self) -> &'static str {
        match self {
            Self::Diesel => "__diesel_schema_migrations",
            Self::Sqlx => "_sqlx_migrations",
            Self::GolangMigrate => "schema_migrations",
        }
    }

    /// Whether the tool's SQLite connection enforces foreign keys by default:
    /// diesel runs no `PRAGMA` (diesel 2.3 `sqlite/connection/raw.rs`), so
    /// SQLite's compiled-in default applies, which is off; sqlx turns them on
    /// when it connects (sqlx-sqlite 0.9 `options/mod.rs`); mattn/go-sqlite3,
    /// golang-migrate's `sqlite3` driver, leaves them off unless its URL
    /// says `_foreign_keys=1`.
    pub fn default_foreign_keys(self) -> bool {
        self == Self::Sqlx
    }

    /// Whether the tool lets the service name its history table: sqlx
    /// (`sqlx.toml` `[migrate] table-name`) and golang-migrate
    /// (`x-migrations-table`) do, diesel does not.
    pub fn history_table_configurable(self) -> bool {
        self != Self::Diesel
    }

    /// Reads `text` as this tool's version: how a version recorded in the
    /// tool's table, in a manifest, or in airlock's own `airlock_migrations`
    /// by an older airlock (`0001`, `2024-02-14-140000`) compares.
    ///
    /// diesel: the text with every `-` removed (as `version_from_string`
    /// leaves it); sqlx: an `i64` (Rust's `i64::from_str`, so `0001` is 1);
    /// golang-migrate: decimal digits as a `u64` (`strconv.ParseUint`).
    /// `None` when the text is not a version of this tool.
    pub fn version(self, text: &str) -> Option<MigrationVersion> {
        match self {
            Self::Diesel => Some(MigrationVersion::Text(text.replace('-', ""))),
            Self::Sqlx => text.parse().ok().map(MigrationVersion::Signed),
            Self::GolangMigrate => {
                if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                text.parse().ok().map(MigrationVersion::Unsigned)
            }
        }
    }

    /// Reads the name of one migration file (sqlx, golang-migrate) or of one
    /// folder's file (diesel: `folder` is the folder, `file` is `up.sql` or
    /// `down.sql`) by the tool's rule.
    pub fn read_name(self, folder: Option<&str>, file: &str) -> NameRule {
        match (self, folder) {
            (Self::Diesel, Some(folder)) => diesel_file(folder, file),
            (Self::Diesel, None) => NameRule::Ignored,
            (Self::Sqlx, None) => sqlx_file(file),
            (Self::GolangMigrate, None) => golang_migrate_file(file),
            (_, Some(_)) => NameRule::Ignored,
        }
    }
}

impl fmt::Display for MigrationTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MigrationTool {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                format!("`{s}` is not a migration tool: use diesel, sqlx or golang-migrate")
            })
    }
}

/// A migration's version as its tool compares it. Versions of one database
/// all have the same tool, so they compare as that tool compares them:
/// diesel as text (its `MigrationVersion` derives `Ord` over a string, so
/// `10` sorts before `9`), sqlx as `i64`, golang-migrate as `u64`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MigrationVersion {
    /// diesel: the folder name up to its first `_`, without `-`.
    Text(String),
    /// sqlx: the `i64` before the file name's first `_`.
    Signed(i64),
    /// golang-migrate: the `u64` before the file name's first `_`.
    Unsigned(u64),
}

impl fmt::Display for MigrationVersion {
    /// The version as the tool writes it in its history table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(t) => f.write_str(t),
            Self::Signed(n) => write!(f, "{n}"),
            Self::Unsigned(n) => write!(f, "{n}"),
        }
    }
}

/// A migration name read by its tool's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationName {
    /// The version.
    pub version: MigrationVersion,
    /// What the tool calls its description: sqlx's description (`_` as
    /// spaces, stored in `_sqlx_migrations`), golang-migrate's title, or for
    /// diesel the folder name after its first `_` (shown only).
    pub description: String,
    /// `up` or `down`.
    pub direction: Direction,
}

/// What a tool makes of a file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameRule {
    /// A migration.
    Migration(MigrationName),
    /// Not a migration: the tool skips it without a word.
    Ignored,
    /// The tool stops with this error.
    Refused(String),
}

/// diesel: the version of folder `folder` is its text before the first `_`
/// with every `-` removed, whatever the characters
/// (migrations_internals 2.3 `version_from_string`), so
/// `2024-03-13_170000_sso` is version `20240313`. Only `up.sql` and
/// `down.sql` are migrations (diesel_migrations `file_based_migrations.rs`).
fn diesel_file(folder: &str, file: &str) -> NameRule {
    let direction = match file {
        "up.sql" => Direction::Up,
        "down.sql" => Direction::Down,
        _ => return NameRule::Ignored,
    };
    let (version, description) = folder.split_once('_').unwrap_or((folder, ""));
    NameRule::Migration(MigrationName {
        version: MigrationVersion::Text(version.replace('-', "")),
        description: description.to_owned(),
        direction,
    })
}

/// sqlx (sqlx-core 0.9 `migrate/source.rs`, `resolve_blocking_with_config`):
/// the name splits at its first `_`; a name without `_`, or whose rest does
/// not end in `.sql`, is ignored; the part before must parse as an `i64` or
/// sqlx stops; a rest ending `.up.sql` or `.down.sql` is that direction,
/// anything else up (`MigrationType::from_filename`); the description is the
/// rest without that suffix (removed as often as it repeats, as
/// `trim_end_matches` does) and with `_` as spaces.
fn sqlx_file(file: &str) -> NameRule {
    let Some((version, rest)) = file.split_once('_') else {
        return NameRule::Ignored;
    };
    if !rest.ends_with(".sql") {
        return NameRule::Ignored;
    }
    let Ok(version) = version.parse::<i64>() else {
        return NameRule::Refused(format!(
            "error parsing migration filename {file:?}; expected integer version prefix (e.g. `01_foo.sql`)"
        ));
    };
    let (suffix, direction) = if rest.ends_with(".up.sql") {
        (".up.sql", Direction::Up)
    } else if rest.ends_with(".down.sql") {
        (".down.sql", Direction::Down)
    } else {
        (".sql", Direction::Up)
    };
    NameRule::Migration(MigrationName {
        version: MigrationVersion::Signed(version),
        description: rest.trim_end_matches(suffix).replace('_', " "),
        direction,
    })
}

/// golang-migrate's file name rule (`source/parse.go`):
/// `^([0-9]+)_(.*)\.(down|up)\.(.*)$`, the version parsed as a `uint64`.
static GOLANG_MIGRATE_NAME: LazyLock<Option<regex::Regex>> =
    LazyLock::new(|| regex::Regex::new(r"^([0-9]+)_(.*)\.(down|up)\.(.*)$").ok());

/// golang-migrate (`source/parse.go` `Parse`, `source/iofs/iofs.go` `init`):
/// a name that does not match its pattern, or whose version overflows a
/// `uint64`, is skipped.
fn golang_migrate_file(file: &str) -> NameRule {
    let Some(re) = GOLANG_MIGRATE_NAME.as_ref() else {
        return NameRule::Refused("the golang-migrate name pattern does not compile".into());
    };
    let Some(caps) = re.captures(file) else {
        return NameRule::Ignored;
    };
    let (Some(version), Some(title), Some(direction)) = (caps.get(1), caps.get(2), caps.get(3))
    else {
        return NameRule::Ignored;
    };
    let Ok(version) = version.as_str().parse::<u64>() else {
        return NameRule::Ignored;
    };
    NameRule::Migration(MigrationName {
        version: MigrationVersion::Unsigned(version),
        description: title.as_str().to_owned(),
        direction: if direction.as_str() == "up" {
            Direction::Up
        } else {
            Direction::Down
        },
    })
}

/// Whether sqlx runs `sql` outside a transaction: the text starts with
/// `-- no-transaction`, exactly, at its first byte (sqlx-core 0.9
/// `migrate/source.rs`: `sql.starts_with("-- no-transaction")`).
pub fn sqlx_no_transaction(sql: &str) -> bool {
    sql.starts_with("-- no-transaction")
}

/// The checksum sqlx records for a migration: SHA-384 of the file's text,
/// byte for byte, 48 bytes (sqlx-core 0.9 `migrate/migration.rs`,
/// `checksum`), leaving out the characters of `ignored` (`sqlx.toml`
/// `[migrate] ignored-chars`; sqlx-core `migrate/source.rs`,
/// `checksum_with`).
pub fn sqlx_checksum(sql: &str, ignored: &[char]) -> Vec<u8> {
    let mut digest = Sha384::new();
    for fragment in sql.split(|c| ignored.contains(&c)) {
        digest.update(fragment.as_bytes());
    }
    digest.finalize().to_vec()
}

/// Whether `name` can be a history table: an SQL identifier of letters,
/// digits and `_`, not starting with a digit, at most 64 bytes, and neither
/// SQLite's (`sqlite_…`) nor airlock's own `airlock_migrations`.
pub fn valid_history_table(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.to_ascii_lowercase().starts_with("sqlite_")
        && !name.eq_ignore_ascii_case("airlock_migrations")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(rule: NameRule) -> MigrationVersion {
        match rule {
            NameRule::Migration(m) => m.version,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn diesel_versions_are_text_before_the_first_underscore_without_dashes() {
        let v = |folder| version(diesel_file(folder, "up.sql"));
        assert_eq!(
            v("2024-03-13_170000_sso"),
            MigrationVersion::Text("20240313".into())
        );
        assert_eq!(
            v("2024-03-13-170000_sso_users"),
            MigrationVersion::Text("20240313170000".into())
        );
        assert_eq!(v("v1_init"), MigrationVersion::Text("v1".into()));
        assert_eq!(v("20240101"), MigrationVersion::Text("20240101".into()));
        // Ordered as text: the 8-character date sorts between two 14-digit versions.
        let mut all = [
            v("2024-06-05-131359_b"),
            v("2024-03-13_170000_sso"),
            v("2024-03-06-170000_a"),
        ];
        all.sort();
        assert_eq!(
            all.map(|v| v.to_string()),
            ["20240306170000", "20240313", "20240605131359"]
        );
        assert_eq!(diesel_file("1_x", "metadata.toml"), NameRule::Ignored);
        match diesel_file("1_x", "down.sql") {
            NameRule::Migration(m) => assert_eq!(m.direction, Direction::Down),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sqlx_names_follow_resolve_blocking() {
        match sqlx_file("0001_add_orders.sql") {
            NameRule::Migration(m) => {
                assert_eq!(m.version, MigrationVersion::Signed(1));
                assert_eq!(m.description, "add orders");
                assert_eq!(m.direction, Direction::Up);
            }
            other => panic!("{other:?}"),
        }
        match sqlx_file("20240101120000_init.down.sql") {
            NameRule::Migration(m) => {
                assert_eq!(m.version, MigrationVersion::Signed(20240101120000));
                assert_eq!(m.description, "init");
                assert_eq!(m.direction, Direction::Down);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(sqlx_file("README.md"), NameRule::Ignored);
        assert_eq!(sqlx_file("1_x.sql.bak"), NameRule::Ignored);
        assert_eq!(sqlx_file("1_x.SQL"), NameRule::Ignored);
        assert!(matches!(
            sqlx_file("2024-03-13_x.sql"),
            NameRule::Refused(_)
        ));
        assert!(matches!(
            sqlx_file("99999999999999999999_x.sql"),
            NameRule::Refused(_)
        ));
        assert_eq!(version(sqlx_file("-5_x.sql")), MigrationVersion::Signed(-5));
        // Numeric order: 10 after 9.
        assert!(version(sqlx_file("9_a.sql")) < version(sqlx_file("10_b.sql")));
    }

    #[test]
    fn golang_migrate_names_follow_its_pattern() {
        match golang_migrate_file("0001_create_users.up.sql") {
            NameRule::Migration(m) => {
                assert_eq!(m.version, MigrationVersion::Unsigned(1));
                assert_eq!(m.description, "create_users");
                assert_eq!(m.direction, Direction::Up);
            }
            other => panic!("{other:?}"),
        }
        // The title is greedy: the last `.up.` or `.down.` decides.
        match golang_migrate_file("1_a.up.b.down.txt") {
            NameRule::Migration(m) => {
                assert_eq!(m.description, "a.up.b");
                assert_eq!(m.direction, Direction::Down);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(golang_migrate_file("1_x.sql"), NameRule::Ignored);
        assert_eq!(
            golang_migrate_file("2024-03-13_x.up.sql"),
            NameRule::Ignored
        );
        assert_eq!(
            golang_migrate_file("99999999999999999999_x.up.sql"),
            NameRule::Ignored
        );
        assert_eq!(golang_migrate_file("README.md"), NameRule::Ignored);
    }

    #[test]
    fn recorded_versions_read_as_each_tool_reads_them() {
        assert_eq!(
            MigrationTool::Sqlx.version("0001"),
            Some(MigrationVersion::Signed(1))
        );
        assert_eq!(
            MigrationTool::Diesel.version("2024-02-14-140000"),
            Some(MigrationVersion::Text("20240214140000".into()))
        );
        assert_eq!(MigrationTool::GolangMigrate.version("+1"), None);
        assert_eq!(
            MigrationTool::GolangMigrate.version("007"),
            Some(MigrationVersion::Unsigned(7))
        );
        assert_eq!(MigrationTool::Sqlx.version("x"), None);
    }

    #[test]
    fn sqlx_transaction_marker_and_checksum() {
        assert!(sqlx_no_transaction("-- no-transaction\nVACUUM;"));
        assert!(!sqlx_no_transaction("\n-- no-transaction\nVACUUM;"));
        assert!(!sqlx_no_transaction("-- No-Transaction"));
        assert_eq!(sqlx_checksum("", &[]).len(), 48);
        assert_eq!(
            sqlx_checksum("a\r\nb\r\n", &['\r']),
            sqlx_checksum("a\nb\n", &[])
        );
        assert!(valid_history_table("_sqlx_migrations"));
        assert!(!valid_history_table("x; DROP TABLE users"));
        assert!(!valid_history_table("airlock_migrations"));
        assert_eq!(
            hex::encode(sqlx_checksum("abc", &[])),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
        );
        assert_eq!(
            "golang-migrate".parse::<MigrationTool>(),
            Ok(MigrationTool::GolangMigrate)
        );
        assert!("flyway".parse::<MigrationTool>().is_err());
    }
}
