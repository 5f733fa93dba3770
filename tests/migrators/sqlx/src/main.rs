//! Runs a sqlx migration folder with the real sqlx `Migrator`, as a service
//! that embeds it runs it at start-up, and prints the versions it applied,
//! one per line.
//!
//! ```text
//! airlock-sqlx-migrator DATABASE FOLDER
//! ```
//!
//! `sqlx::migrate!` reads the folder with the same code at compile time
//! (sqlx-core `resolve_blocking`); reading it at run time lets one build
//! serve every test. The connection is sqlx's default for SQLite (foreign
//! keys on), creating a missing file. Exit status 1 with sqlx's error on
//! stderr when it fails.

use std::path::Path;
use std::process::ExitCode;

use sqlx::migrate::{Migrate, Migrator};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::ConnectOptions;

fn run(database: &str, folder: &Path) -> Result<Vec<String>, String> {
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
        let migrator = Migrator::new(folder).await.map_err(|e| e.to_string())?;
        let table = "_sqlx_migrations";
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
    let [database, folder] = args.as_slice() else {
        eprintln!("usage: airlock-sqlx-migrator DATABASE FOLDER");
        return ExitCode::from(2);
    };
    match run(database, Path::new(folder)) {
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
