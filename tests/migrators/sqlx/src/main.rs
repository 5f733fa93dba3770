//! Runs a sqlx migration folder with the real sqlx `Migrator`, as a service
//! that embeds it runs it at start-up, and prints the versions it applied,
//! one per line.
//!
//! ```text
//! airlock-sqlx-migrator DATABASE FOLDER [TABLE [IGNORED_CHARS]]
//! ```
//!
//! `sqlx::migrate!` reads the folder with the same code at compile time
//! (sqlx-core `resolve_blocking_with_config`); reading it at run time lets
//! one build serve every test. TABLE and IGNORED_CHARS stand for
//! `sqlx.toml`'s `[migrate] table-name` and `ignored-chars`, which
//! `migrate!` applies the same way (`dangerous_set_table_name`,
//! `ResolveConfig`). The connection is sqlx's default for SQLite (foreign
//! keys on), creating a missing file. Exit status 1 with sqlx's error on
//! stderr when it fails.

use std::path::Path;
use std::process::ExitCode;

use sqlx::migrate::{Migrate, Migrator, ResolveConfig, ResolveWith};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::ConnectOptions;

fn run(database: &str, folder: &Path, table: &str, ignored: &str) -> Result<Vec<String>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut conn = SqliteConnectOptions::new()
            .filename(database)
            .create_if_missing(true)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let mut config = ResolveConfig::new();
        config.ignore_chars(ignored.chars());
        let mut migrator = Migrator::new(ResolveWith(folder.to_owned(), config))
            .await
            .map_err(|e| e.to_string())?;
        migrator.dangerous_set_table_name(table.to_owned());
        conn.ensure_migrations_table(table)
            .await
            .map_err(|e| e.to_string())?;
        let before = conn
            .list_applied_migrations(table)
            .await
            .map_err(|e| e.to_string())?;
        migrator.run(&mut conn).await.map_err(|e| e.to_string())?;
        let after = conn
            .list_applied_migrations(table)
            .await
            .map_err(|e| e.to_string())?;
        Ok(after
            .iter()
            .filter(|a| !before.iter().any(|b| b.version == a.version))
            .map(|a| a.version.to_string())
            .collect())
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (database, folder, table, ignored) = match args.as_slice() {
        [d, f] => (d, f, "_sqlx_migrations", ""),
        [d, f, t] => (d, f, t.as_str(), ""),
        [d, f, t, i] => (d, f, t.as_str(), i.as_str()),
        _ => {
            eprintln!("usage: airlock-sqlx-migrator DATABASE FOLDER [TABLE [IGNORED_CHARS]]");
            return ExitCode::from(2);
        }
    };
    match run(database, Path::new(folder), table, ignored) {
        Ok(applied) => {
            for v in applied {
                println!("{v}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sqlx: {e}");
            ExitCode::FAILURE
        }
    }
}
