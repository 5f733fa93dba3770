//! Runs a diesel migration folder with the real diesel_migrations, as a
//! service that embeds it runs it at start-up, and prints the versions it
//! applied, one per line.
//!
//! ```text
//! airlock-diesel-migrator DATABASE FOLDER
//! ```
//!
//! `embed_migrations!` reads the folder with the same code at compile time
//! (diesel_migrations `FileBasedMigrations`); reading it at run time lets
//! one build serve every test. diesel links the system's SQLite, as the
//! `sqlite` feature does by default, so foreign keys are SQLite's default.
//! Exit status 1 with diesel's error on stderr when it fails.

use std::path::Path;
use std::process::ExitCode;

use diesel::{Connection, SqliteConnection};
use diesel_migrations::{FileBasedMigrations, MigrationHarness};

fn run(database: &str, folder: &Path) -> Result<Vec<String>, String> {
    let mut conn = SqliteConnection::establish(database).map_err(|e| e.to_string())?;
    let migrations = FileBasedMigrations::from_path(folder).map_err(|e| e.to_string())?;
    let applied = conn
        .run_pending_migrations(migrations)
        .map_err(|e| e.to_string())?;
    Ok(applied.iter().map(ToString::to_string).collect())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [database, folder] = args.as_slice() else {
        eprintln!("usage: airlock-diesel-migrator DATABASE FOLDER");
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
            eprintln!("diesel: {e}");
            ExitCode::FAILURE
        }
    }
}
