//! Migrations exactly as diesel, sqlx and golang-migrate run them: real
//! published layouts applied through airlock, then checked against the real
//! diesel and sqlx migrators (tests/migrators), which must find nothing left
//! to do; databases those migrators set up first are adopted; a failure of
//! any kind rolls back to the dump of before.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::Connection;
use sha2::Digest as _;

use crate::demo::Demo;
use crate::harness::*;

/// The real migrator of `tool` (`diesel` or `sqlx`), built by tests/run.sh.
fn migrator(tool: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("migrators/target/release/airlock-{tool}-migrator"));
    assert!(
        path.exists(),
        "{} is missing: tests/run.sh builds it (cargo build --release --manifest-path tests/migrators/{tool}/Cargo.toml, CARGO_TARGET_DIR=tests/migrators/target)",
        path.display()
    );
    path
}

/// Runs the real `tool` on `db` with `folder`, as a service that embeds it
/// does at start-up; returns the versions it applied.
fn run_migrator(tool: &str, db: &Path, folder: &Path) -> Vec<String> {
    run_migrator_with(tool, db, folder, &[])
}

/// [`run_migrator`] with the tool's own settings (sqlx: TABLE, IGNORED_CHARS).
fn run_migrator_with(tool: &str, db: &Path, folder: &Path, settings: &[&str]) -> Vec<String> {
    let out = Command::new(migrator(tool))
        .arg(db)
        .arg(folder)
        .args(settings)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Writes `files` (path below the folder, text) as the folder `dir`.
fn write_folder(dir: &Path, files: &[(&str, &str)]) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap();
    for (rel, text) in files {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
}

/// A release edit: the migrations folder holds `files`, and the spec
/// declares `tool` when given.
fn with_migrations<'a>(
    files: &'a [(&'a str, &'a str)],
    tool: Option<&'a str>,
) -> impl FnOnce(&Path) + 'a {
    let keys = tool.map(|t| format!("tool = \"{t}\""));
    with_migrations_and(files, keys)
}

/// [`with_migrations`] with other `[[migrations]]` keys (TOML lines).
fn with_migrations_and<'a>(
    files: &'a [(&'a str, &'a str)],
    keys: Option<String>,
) -> impl FnOnce(&Path) + 'a {
    move |release: &Path| {
        write_folder(&release.join("migrations"), files);
        if let Some(keys) = keys {
            let spec = release.join("bundle.toml");
            let text = fs::read_to_string(&spec).unwrap().replace(
                "dir = \"migrations\"",
                &format!("dir = \"migrations\"\n{keys}"),
            );
            fs::write(&spec, text).unwrap();
        }
    }
}

/// Runs `plan` of `bundle` on the demo site; it must say each of `wants`.
fn plan_says(demo: &Demo, bundle: &str, wants: &[&str]) -> String {
    let plan = airlock_apply(&["plan", bundle, "--site", &demo.site()]).ok();
    for want in wants {
        assert!(
            plan.stdout.contains(want),
            "plan lacks `{want}`:\n{}",
            plan.stdout
        );
    }
    plan.stdout
}

/// Applies `bundle` on the demo site; it must succeed. Returns stderr.
fn apply_ok(demo: &Demo, bundle: &str) -> String {
    airlock_apply(&["apply", bundle, "--site", &demo.site()])
        .ok()
        .stderr
}

/// Applies `bundle` on the demo site; it must exit `code` and say each of
/// `wants` on stderr.
fn apply_fails(demo: &Demo, bundle: &str, code: i32, wants: &[&str]) {
    let run = airlock_apply(&["apply", bundle, "--site", &demo.site()]);
    assert_eq!(run.code, code, "{}", run.stderr);
    for want in wants {
        assert!(
            run.stderr.contains(want),
            "stderr lacks `{want}`:\n{}",
            run.stderr
        );
    }
}

fn db(demo: &Demo) -> PathBuf {
    demo.site_dir().join("node/app.db")
}

fn strings(db: &Path, sql: &str) -> Vec<String> {
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| {
        let v: rusqlite::types::Value = r.get(0)?;
        Ok(match v {
            rusqlite::types::Value::Text(t) => t,
            other => format!("{other:?}"),
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn count(db: &Path, table: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// A diesel history shaped like a large real one: a folder named
/// `YYYY-MM-DD_HHMMSS_name` (version `20240313`, which diesel orders as text
/// between two 14-digit versions), a table rebuild of a parent table whose
/// children hold rows and cascade on delete, and a `VACUUM` that diesel runs
/// outside a transaction because `metadata.toml` says so.
const DIESEL: &[(&str, &str)] = &[
    (
        "2024-01-01-000000_create_users/up.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE devices (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE, label TEXT NOT NULL);
INSERT INTO users (id, name) VALUES (1, 'ada'), (2, 'grace');
INSERT INTO devices (user_id, label) VALUES (1, 'laptop'), (1, 'phone'), (2, 'desk');
",
    ),
    (
        "2024-01-01-000000_create_users/down.sql",
        "DROP TABLE devices;\nDROP TABLE users;\n",
    ),
    (
        "2024-03-06-170000_add_sso_users/up.sql",
        "CREATE TABLE sso_users (user_uuid TEXT PRIMARY KEY, identifier TEXT NOT NULL);\n",
    ),
    (
        "2024-03-13_170000_sso_userscascade/up.sql",
        "DROP TABLE IF EXISTS sso_users;
CREATE TABLE sso_users (user_uuid TEXT PRIMARY KEY, identifier TEXT NOT NULL, FOREIGN KEY (user_uuid) REFERENCES users (id) ON DELETE CASCADE);
",
    ),
    (
        "2024-06-05-131359_rebuild_users/up.sql",
        "CREATE TABLE users_new (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL DEFAULT '');
INSERT INTO users_new (id, name) SELECT id, name FROM users;
DROP TABLE users;
ALTER TABLE users_new RENAME TO users;
",
    ),
    ("2024-07-01-000000_vacuum/up.sql", "VACUUM;\n"),
    (
        "2024-07-01-000000_vacuum/metadata.toml",
        "run_in_transaction = false\n",
    ),
    ("README.md", "diesel skips plain files here.\n"),
];

const DIESEL_VERSIONS: [&str; 5] = [
    "20240101000000",
    "20240306170000",
    "20240313",
    "20240605131359",
    "20240701000000",
];

#[test]
fn a_diesel_history_applied_by_airlock_leaves_diesel_nothing_to_do() {
    let demo = Demo::start();
    let bundle = demo.release("1.1.0", with_migrations(DIESEL, None));
    plan_says(&demo, &bundle, &["migrate main: diesel rules (named in the bundle), foreign keys off, history in __diesel_schema_migrations; 5 of 5 pending", "main 20240313 `170000_sso_userscascade` (diesel, in a transaction)", "main 20240701000000 `vacuum` (diesel, without a transaction)"]);
    apply_ok(&demo, &bundle);
    let db = db(&demo);

    // diesel's order (text), diesel's table, diesel's values.
    assert_eq!(
        strings(
            &db,
            "SELECT version FROM __diesel_schema_migrations ORDER BY rowid"
        ),
        DIESEL_VERSIONS
    );
    // The rebuild ran with foreign keys off, as diesel runs it: the
    // children of the rebuilt table kept their rows.
    assert_eq!(count(&db, "devices"), 3);
    assert_eq!(count(&db, "users"), 2);

    // The real diesel migrator finds nothing to do.
    let folder = demo.root.join("release-1.1.0/migrations");
    assert_eq!(run_migrator("diesel", &db, &folder), Vec::<String>::new());

    // And diesel on an empty database ends where airlock did: same
    // schema and rows, same history table and versions.
    let fresh = tempfile::tempdir().unwrap();
    let by_diesel = fresh.path().join("diesel.db");
    assert_eq!(run_migrator("diesel", &by_diesel, &folder), DIESEL_VERSIONS);
    assert_eq!(sqlite_content_hash(&db), sqlite_content_hash(&by_diesel));
    let schema = "SELECT sql FROM sqlite_master WHERE name = '__diesel_schema_migrations'";
    assert_eq!(strings(&db, schema), strings(&by_diesel, schema));
}

#[test]
fn airlock_adopts_a_database_diesel_migrated_and_runs_only_what_is_new() {
    let demo = Demo::start();
    let db = db(&demo);
    // The service migrated itself with the first two migrations.
    let early = demo.root.join("early");
    write_folder(&early, &DIESEL[..3]);
    assert_eq!(
        run_migrator("diesel", &db, &early),
        ["20240101000000", "20240306170000"]
    );
    let before_rows = count(&db, "devices");

    let bundle = demo.release("1.1.0", with_migrations(DIESEL, None));
    plan_says(&demo, &bundle, &["; 3 of 5 pending"]);
    let stderr = apply_ok(&demo, &bundle);
    assert!(
        stderr.contains("migrations: main:20240313, main:20240605131359, main:20240701000000"),
        "{stderr}"
    );
    assert_eq!(count(&db, "devices"), before_rows);
    let folder = demo.root.join("release-1.1.0/migrations");
    assert_eq!(run_migrator("diesel", &db, &folder), Vec::<String>::new());
}

/// A sqlx history: versions 9 and 10 (sqlx orders by number, so 10 runs
/// after the 9 it needs), a `-- no-transaction` VACUUM, and an index.
const SQLX: &[(&str, &str)] = &[
    (
        "0001_create_users.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE devices (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE, label TEXT NOT NULL);
INSERT INTO users (id, name) VALUES (1, 'ada'), (2, 'grace');
INSERT INTO devices (user_id, label) VALUES (1, 'laptop'), (2, 'desk');
",
    ),
    (
        "0002_add_email.sql",
        "ALTER TABLE users ADD COLUMN email TEXT NOT NULL DEFAULT '';\n",
    ),
    ("0003_vacuum.sql", "-- no-transaction\nVACUUM;\n"),
    (
        "9_create_tags.sql",
        "CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);\n",
    ),
    (
        "10_seed_tags.sql",
        "INSERT INTO tags (name) VALUES ('red'), ('blue');\n",
    ),
];

fn sqlx_rows(db: &Path) -> Vec<(i64, String, bool, Vec<u8>)> {
    Connection::open(db)
        .unwrap()
        .prepare(
            "SELECT version, description, success, checksum FROM _sqlx_migrations ORDER BY version",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_sqlx_history_applied_by_airlock_leaves_sqlx_nothing_to_do() {
    let demo = Demo::start();
    let bundle = demo.release("1.1.0", with_migrations(SQLX, None));
    let plan = plan_says(
        &demo,
        &bundle,
        &["main 3 `vacuum` (sqlx, without a transaction)"],
    );
    let nine = plan.find("main 9 `create tags`").unwrap();
    let ten = plan.find("main 10 `seed tags`").unwrap();
    assert!(nine < ten, "{plan}");
    apply_ok(&demo, &bundle);
    let db = db(&demo);
    assert_eq!(count(&db, "tags"), 2);

    // The real sqlx migrator checks every recorded checksum and finds
    // nothing to do.
    let folder = demo.root.join("release-1.1.0/migrations");
    assert_eq!(run_migrator("sqlx", &db, &folder), Vec::<String>::new());

    // sqlx on an empty database records the same rows and ends with the
    // same content.
    let fresh = tempfile::tempdir().unwrap();
    let by_sqlx = fresh.path().join("sqlx.db");
    assert_eq!(
        run_migrator("sqlx", &by_sqlx, &folder),
        ["1", "2", "3", "9", "10"]
    );
    assert_eq!(sqlx_rows(&db), sqlx_rows(&by_sqlx));
    assert_eq!(sqlite_content_hash(&db), sqlite_content_hash(&by_sqlx));
    let schema = "SELECT sql FROM sqlite_master WHERE name = '_sqlx_migrations'";
    assert_eq!(strings(&db, schema), strings(&by_sqlx, schema));
}

#[test]
fn airlock_adopts_a_database_sqlx_migrated_and_refuses_one_sqlx_would_refuse() {
    let demo = Demo::start();
    let db = db(&demo);
    let early = demo.root.join("early");
    write_folder(&early, &SQLX[..2]);
    assert_eq!(run_migrator("sqlx", &db, &early), ["1", "2"]);

    let bundle = demo.release("1.1.0", with_migrations(SQLX, None));
    let stderr = apply_ok(&demo, &bundle);
    assert!(
        stderr.contains("migrations: main:3, main:9, main:10"),
        "{stderr}"
    );
    let folder = demo.root.join("release-1.1.0/migrations");
    assert_eq!(run_migrator("sqlx", &db, &folder), Vec::<String>::new());

    // A row sqlx marks as failed (success = false) is refused before
    // anything changes, as sqlx refuses it ("Dirty").
    Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE _sqlx_migrations SET success = false WHERE version = 10",
            [],
        )
        .unwrap();
    let before = sqlite_dump_hash(&db);
    let next = demo.release(
        "1.2.0",
        with_migrations(
            &[
                SQLX[0],
                SQLX[1],
                SQLX[2],
                SQLX[3],
                SQLX[4],
                ("11_more.sql", "CREATE TABLE more (x);\n"),
            ],
            None,
        ),
    );
    apply_fails(
        &demo,
        &next,
        3,
        &["sqlx records migration 10 as failed half way (_sqlx_migrations)"],
    );
    assert_eq!(sqlite_dump_hash(&db), before);

    // A recorded version the bundle lacks is refused ("VersionMissing").
    Connection::open(&db)
        .unwrap()
        .execute("UPDATE _sqlx_migrations SET success = true", [])
        .unwrap();
    let before = sqlite_dump_hash(&db);
    let older = demo.release("1.3.0", with_migrations(&SQLX[..4], None));
    apply_fails(
        &demo,
        &older,
        3,
        &["sqlx records migration 10 in _sqlx_migrations, which this bundle does not have"],
    );
    assert_eq!(sqlite_dump_hash(&db), before);
}

#[test]
fn a_database_an_older_airlock_migrated_gets_the_tool_rows_without_running_again() {
    let demo = Demo::start();
    let db = db(&demo);
    // As airlock 0.1 left it: the migrations ran, recorded only in
    // airlock_migrations under the versions as the files spell them.
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(SQLX[0].1).unwrap();
    conn.execute_batch(SQLX[1].1).unwrap();
    conn.execute_batch(
        "CREATE TABLE airlock_migrations (version TEXT PRIMARY KEY, name TEXT NOT NULL, sha256 TEXT NOT NULL, applied_at INTEGER NOT NULL, bundle_version TEXT NOT NULL)",
    )
    .unwrap();
    for (version, (name, text)) in ["0001", "0002"].iter().zip(&SQLX[..2]) {
        conn.execute(
            "INSERT INTO airlock_migrations VALUES (?1, ?2, ?3, 1700000000, '1.0.0')",
            rusqlite::params![
                version,
                name,
                hex::encode(sha2::Sha256::digest(text.as_bytes()))
            ],
        )
        .unwrap();
    }
    drop(conn);

    let bundle = demo.release("1.1.0", with_migrations(SQLX, None));
    plan_says(
        &demo,
        &bundle,
        &["main 1 `create users` (sqlx, record only"],
    );
    apply_ok(&demo, &bundle);
    // Ran once: the seed rows are not doubled.
    assert_eq!(count(&db, "users"), 2);
    let folder = demo.root.join("release-1.1.0/migrations");
    assert_eq!(run_migrator("sqlx", &db, &folder), Vec::<String>::new());
}

/// golang-migrate scripts carry their own transaction.
const GOLANG: &[(&str, &str)] = &[
    (
        "000001_create_users.up.sql",
        "BEGIN;
CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
INSERT INTO users (id, name) VALUES (1, 'ada'), (2, 'grace');
COMMIT;
",
    ),
    ("000001_create_users.down.sql", "DROP TABLE users;\n"),
    (
        "000002_add_email.up.sql",
        "BEGIN;\nALTER TABLE users ADD COLUMN email TEXT NOT NULL DEFAULT '';\nCOMMIT;\n",
    ),
    (
        "000002_add_email.down.sql",
        "ALTER TABLE users DROP COLUMN email;\n",
    ),
];

#[test]
fn golang_migrate_scripts_with_their_own_transaction_apply_and_record_one_clean_version() {
    let demo = Demo::start();
    // `.up.sql` files alone are read by sqlx and golang-migrate alike: the
    // spec must say which.
    let ambiguous = demo.root.join("ambiguous");
    crate::demo::copy_tree(&demo.root.join("release"), &ambiguous);
    with_migrations(GOLANG, None)(&ambiguous);
    let run = airlock_build(&[
        "--no-progress",
        "build",
        "--spec",
        &ambiguous.join("bundle.toml").display().to_string(),
        "--key",
        &demo.keys.secret("release"),
        "--out",
        &demo.root.join("out-ambiguous").display().to_string(),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("declare the tool"), "{}", run.stderr);
    assert!(!demo
        .root
        .join("out-ambiguous")
        .join("demo-1.1.0.airlock")
        .exists());

    let bundle = demo.release("1.1.0", with_migrations(GOLANG, Some("golang-migrate")));
    plan_says(
        &demo,
        &bundle,
        &["main 1 `create_users` (golang-migrate, without a transaction)"],
    );
    apply_ok(&demo, &bundle);
    let db = db(&demo);
    assert_eq!(count(&db, "users"), 2);
    assert_eq!(
        strings(&db, "SELECT version || ',' || dirty FROM schema_migrations"),
        ["2,0"]
    );
    assert_eq!(
        strings(
            &db,
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'schema_migrations'"
        ),
        ["version_unique"]
    );

    // A dirty version is refused before anything changes, as
    // golang-migrate refuses it.
    Connection::open(&db)
        .unwrap()
        .execute("UPDATE schema_migrations SET dirty = 1", [])
        .unwrap();
    let before = sqlite_dump_hash(&db);
    let mut next = GOLANG.to_vec();
    next.push(("000003_tags.up.sql", "CREATE TABLE tags (name TEXT);\n"));
    let bundle = demo.release("1.2.0", with_migrations(&next, Some("golang-migrate")));
    apply_fails(
        &demo,
        &bundle,
        3,
        &[
            "golang-migrate records migration 2 as failed half way (schema_migrations)",
            "migrate force",
        ],
    );
    assert_eq!(sqlite_dump_hash(&db), before);
}

/// A migration of `tool` that changes the database and then fails, with no
/// transaction around it: only the backup can undo the first half.
fn failing(tool: &str) -> (Vec<(&'static str, &'static str)>, Option<&'static str>) {
    let half =
        "CREATE TABLE half (x);\nINSERT INTO half VALUES (1);\nINSERT INTO missing VALUES (1);\n";
    match tool {
        "diesel" => (
            vec![
                DIESEL[0],
                ("2025-01-01-000000_fails/up.sql", half),
                ("2025-01-01-000000_fails/metadata.toml", "run_in_transaction = false\n"),
            ],
            None,
        ),
        "sqlx" => (
            vec![
                SQLX[0],
                ("0002_fails.sql", "-- no-transaction\nCREATE TABLE half (x);\nINSERT INTO half VALUES (1);\nINSERT INTO missing VALUES (1);\n"),
            ],
            None,
        ),
        _ => (
            vec![GOLANG[0], ("000002_fails.up.sql", half)],
            Some("golang-migrate"),
        ),
    }
}

#[test]
fn a_failing_migration_of_each_tool_rolls_back_to_the_dump_of_before() {
    for tool in ["diesel", "sqlx", "golang-migrate"] {
        let demo = Demo::start();
        let db = db(&demo);
        // The database holds rows written by the first migration.
        let (files, declared) = failing(tool);
        let first = demo.release("1.1.0", with_migrations(&files[..1], declared));
        apply_ok(&demo, &first);
        Connection::open(&db)
            .unwrap()
            .execute(
                "INSERT INTO users (id, name) VALUES (3, 'written later')",
                [],
            )
            .unwrap();
        let before = sqlite_dump_hash(&db);

        let broken = demo.release("1.2.0", with_migrations(&files, declared));
        apply_fails(
            &demo,
            &broken,
            4,
            &["no such table: missing", "rolled back to 1.1.0"],
        );
        assert_eq!(
            sqlite_dump_hash(&db),
            before,
            "{tool}: the database is not as before"
        );
        assert!(demo.healthy());
    }
}

#[test]
fn a_failed_apply_removes_a_database_that_did_not_exist_before() {
    let demo = Demo::start();
    let db = db(&demo);
    assert!(!db.exists());
    let (files, declared) = failing("sqlx");
    let broken = demo.release("1.1.0", with_migrations(&files, declared));
    apply_fails(&demo, &broken, 4, &[]);
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let path = PathBuf::from(format!("{}{suffix}", db.display()));
        assert!(!path.exists(), "{} is left behind", path.display());
    }
    assert!(demo.healthy());
}

#[test]
fn a_migration_that_changed_page_size_and_journal_mode_before_failing_is_rolled_back_whole() {
    let demo = Demo::start();
    let db = db(&demo);
    let first = demo.release("1.1.0", with_migrations(&SQLX[..1], None));
    apply_ok(&demo, &first);
    let pragma = |name: &str| -> String {
        Connection::open(&db)
            .unwrap()
            .query_row(&format!("PRAGMA {name}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| format!("{v:?}"))
            .unwrap()
    };
    let before = (
        sqlite_dump_hash(&db),
        pragma("page_size"),
        pragma("journal_mode"),
    );

    // Outside a transaction these take effect, then the script fails.
    let broken = demo.release(
        "1.2.0",
        with_migrations(
            &[
                SQLX[0],
                (
                    "0002_fails.sql",
                    "-- no-transaction\nPRAGMA page_size = 8192;\nVACUUM;\nPRAGMA journal_mode = WAL;\nCREATE TABLE half (x);\nINSERT INTO missing VALUES (1);\n",
                ),
            ],
            None,
        ),
    );
    apply_fails(&demo, &broken, 4, &["rolled back to 1.1.0"]);
    assert_eq!(
        (
            sqlite_dump_hash(&db),
            pragma("page_size"),
            pragma("journal_mode")
        ),
        before
    );
    assert!(demo.healthy());
}

#[test]
fn a_sqlx_service_with_its_own_table_name_and_ignored_chars_is_recorded_as_it_reads() {
    let demo = Demo::start();
    // Written on Windows, with sqlx.toml saying `table-name =
    // "app_migrations"` and `ignored-chars = ["\r"]`.
    let crlf = [
        (
            "1_create.sql",
            "CREATE TABLE notes (id INTEGER PRIMARY KEY,\r\n body TEXT);\r\n",
        ),
        ("2_seed.sql", "INSERT INTO notes (body) VALUES ('a');\r\n"),
    ];
    let keys = "history_table = \"app_migrations\"\nignored_chars = [\"\\r\"]".to_string();
    let bundle = demo.release("1.1.0", with_migrations_and(&crlf, Some(keys)));
    plan_says(
        &demo,
        &bundle,
        &["foreign keys on, history in app_migrations; 2 of 2 pending"],
    );
    apply_ok(&demo, &bundle);
    let db = db(&demo);
    assert_eq!(
        strings(
            &db,
            "SELECT name FROM sqlite_master WHERE name LIKE '%migrations' ORDER BY name"
        ),
        ["airlock_migrations", "app_migrations"]
    );
    let folder = demo.root.join("release-1.1.0/migrations");
    assert_eq!(
        run_migrator_with("sqlx", &db, &folder, &["app_migrations", "\r"]),
        Vec::<String>::new()
    );
}

#[test]
fn a_migration_reverted_with_its_tool_runs_again() {
    let demo = Demo::start();
    let db = db(&demo);
    let bundle = demo.release("1.1.0", with_migrations(&SQLX[..2], None));
    apply_ok(&demo, &bundle);
    // `sqlx migrate revert`: the down script ran and the row is gone;
    // airlock's own row stays.
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "ALTER TABLE users DROP COLUMN email; DELETE FROM _sqlx_migrations WHERE version = 2;",
    )
    .unwrap();
    drop(conn);
    let again = demo.release("1.2.0", with_migrations(&SQLX[..2], None));
    plan_says(
        &demo,
        &again,
        &["main 2 `add email` (sqlx, in a transaction)"],
    );
    apply_ok(&demo, &again);
    assert_eq!(
        strings(
            &db,
            "SELECT name FROM pragma_table_info('users') ORDER BY cid"
        ),
        ["id", "name", "email"]
    );
    assert_eq!(
        strings(
            &db,
            "SELECT bundle_version FROM airlock_migrations WHERE version = '2'"
        ),
        ["1.2.0"]
    );
}

#[test]
fn golang_migrate_with_tx_wrap_runs_each_script_in_a_transaction_as_its_driver_does() {
    let demo = Demo::start();
    let db = db(&demo);
    let plain = [(
        "1_create.up.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n",
    )];
    let keys = || Some("tool = \"golang-migrate\"\ntx_wrap = true".to_string());
    let bundle = demo.release("1.1.0", with_migrations_and(&plain, keys()));
    plan_says(
        &demo,
        &bundle,
        &["main 1 `create` (golang-migrate, in a transaction)"],
    );
    apply_ok(&demo, &bundle);
    let before = sqlite_dump_hash(&db);
    // Inside the driver's transaction a script's own BEGIN fails, as it does
    // under golang-migrate's sqlite3 driver by default.
    let own = [
        plain[0],
        (
            "2_own.up.sql",
            "BEGIN;\nCREATE TABLE tags (name TEXT);\nCOMMIT;\n",
        ),
    ];
    let broken = demo.release("1.2.0", with_migrations_and(&own, keys()));
    apply_fails(
        &demo,
        &broken,
        4,
        &["cannot start a transaction within a transaction"],
    );
    assert_eq!(sqlite_dump_hash(&db), before);
}

#[test]
fn diesel_with_foreign_keys_on_runs_as_a_bundled_sqlite_diesel_does() {
    let demo = Demo::start();
    let db = db(&demo);
    let files = [DIESEL[0], DIESEL[4]];
    let bundle = demo.release(
        "1.1.0",
        with_migrations_and(&files, Some("foreign_keys = true".into())),
    );
    apply_ok(&demo, &bundle);
    // With enforcement on, dropping the parent in the rebuild cascades.
    assert_eq!(count(&db, "devices"), 0);
    assert_eq!(count(&db, "users"), 2);
}
