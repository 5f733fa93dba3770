//! `airlock-apply plan`: what `apply` would do, step by step, with sizes and
//! free space, without changing anything. The bundle's header is
//! authenticated and checked like `verify` does; the payload is not read.

use std::path::Path;

use airlock_formats::Sha256Digest;
use serde::Serialize;

use crate::apply::{space_needs, with_margin};
use crate::backup::{self, hash_file};
use crate::error::ApplyError;
use crate::migrate;
use crate::run::install_target;
use crate::site::Site;
use crate::stage::tree_size;
use crate::state::State;
use crate::verify::{read_and_verify, VerifyOptions};

/// One step of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanStep {
    /// Step name, as `apply` reports it.
    pub step: String,
    /// What it will do.
    pub detail: String,
    /// Bytes it will write, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// Free space on one filesystem.
#[derive(Debug, Clone, Serialize)]
pub struct PlanSpace {
    /// Folder.
    pub dir: String,
    /// What goes there.
    pub what: String,
    /// Bytes needed, with the margin.
    pub needed: u64,
    /// Bytes free now.
    pub available: u64,
    /// Whether it fits.
    pub fits: bool,
}

/// The whole plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Bundle name.
    pub name: String,
    /// Installed version.
    pub from: String,
    /// Where the installed version was read.
    pub from_source: String,
    /// Version to install.
    pub to: String,
    /// Key ids whose signatures count.
    pub signers: Vec<String>,
    /// The steps.
    pub steps: Vec<PlanStep>,
    /// Free space.
    pub space: Vec<PlanSpace>,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn short(d: &Sha256Digest) -> String {
    d.to_hex()[..12].to_owned()
}

/// Builds the plan of applying `bundle` here.
///
/// # Errors
/// [`ApplyError::Refused`] when the bundle would be refused; other errors
/// when the site or state cannot be read.
pub fn plan(site: &Site, bundle: &Path, opts: VerifyOptions) -> Result<Plan, ApplyError> {
    let state = State::open_existing(&site.profile.paths.state_dir)?;
    let v = read_and_verify(site, state.as_ref(), bundle, opts, None)?;
    let m = &v.header.manifest;
    let service = &site.profile.service;
    let mut steps = Vec::new();
    let mut push = |step: &str, detail: String, bytes: Option<u64>| {
        steps.push(PlanStep {
            step: step.into(),
            detail,
            bytes,
        });
    };
    push(
        "lock",
        format!(
            "take `{}`",
            site.profile
                .paths
                .state_dir
                .join(crate::lock::LOCK_FILE)
                .display()
        ),
        None,
    );
    push(
        "verify",
        format!(
            "signatures ok ({} of {} needed), platform, expiry and version rules ok",
            v.signers.len(),
            site.trust.threshold()
        ),
        None,
    );
    push(
        "stage",
        format!(
            "stream {} files into `{}`, checking every SHA-256",
            m.files.len(),
            site.staging_dir().display()
        ),
        Some(m.payload.unpacked_size),
    );
    if let Some(hook) = &m.hooks.pre_stop {
        push("pre_stop", format!("run hook `{hook}`"), None);
    }
    push(
        "stop",
        format!(
            "`{}`, then wait up to {}s for the health check to fail",
            service.stop, service.stop_wait_secs
        ),
        None,
    );
    let data = &site.profile.data;
    for (name, path) in &data.databases {
        push(
            "backup database",
            format!(
                "{name} (`{}`) with SQLite's backup API, then PRAGMA integrity_check",
                path.display()
            ),
            Some(tree_size(path)),
        );
    }
    if let Some(raft) = &data.raft_dir {
        let files = walkdir::WalkDir::new(raft)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .count();
        push(
            "backup raft",
            format!("`{}`: {files} files with SHA-256", raft.display()),
            Some(tree_size(raft)),
        );
    }
    for path in &data.config_files {
        push(
            "backup config",
            format!("`{}`", path.display()),
            Some(tree_size(path)),
        );
    }
    for entry in &m.files {
        if let Some(target) = install_target(site, entry) {
            let now = hash_file(&target).ok();
            let change = match now {
                Some((sha, _)) if sha == entry.sha256 => "already identical".to_string(),
                Some((sha, _)) => format!("replaces {} with {}", short(&sha), short(&entry.sha256)),
                None => format!("new file {}", short(&entry.sha256)),
            };
            push(
                "backup installed",
                format!("`{}`", target.display()),
                Some(tree_size(&target)),
            );
            push(
                "install",
                format!(
                    "{} -> `{}` mode {:o}: {change}",
                    entry.path,
                    target.display(),
                    entry.mode
                ),
                Some(entry.size),
            );
        }
    }
    for database in m.migrated_databases() {
        let path = data
            .databases
            .get(database)
            .map(|p| p.as_path())
            .unwrap_or(Path::new(""));
        let pending =
            migrate::pending(path, database, m).map_err(|reason| ApplyError::Preflight {
                step: "plan".into(),
                reason,
            })?;
        let total = m.migrations_for(database).count();
        if pending.is_empty() {
            push(
                "migrate",
                format!("{database}: none pending ({total} already applied)"),
                None,
            );
        }
        for (_, info) in pending {
            push(
                "migrate",
                format!("{database} {} {}", info.version, info.description),
                None,
            );
        }
    }
    push(
        "start",
        format!(
            "`{}`, then wait up to {}s for health{}",
            service.start,
            service.health_wait_secs,
            if service.version.is_some() {
                format!(" and version {}", m.version)
            } else {
                String::new()
            }
        ),
        None,
    );
    if let Some(hook) = &m.hooks.post_start {
        push("post_start", format!("run hook `{hook}`"), None);
    }
    let complete = backup::list(&site.profile.paths.backup_dir)
        .into_iter()
        .filter(|b| b.manifest.is_some())
        .count();
    let keep = site.profile.paths.keep_backups;
    push(
        "commit",
        format!(
            "record {} as installed; keep {keep} backup(s), removing {}",
            m.version,
            (complete + 1).saturating_sub(keep)
        ),
        None,
    );
    let space = space_needs(site, m)?
        .into_iter()
        .map(|n| PlanSpace {
            dir: n.dir.display().to_string(),
            what: n.what.into(),
            needed: with_margin(n.bytes),
            available: n.available,
            fits: n.fits(),
        })
        .collect();
    Ok(Plan {
        name: m.name.clone(),
        from: v.installed.version.to_string(),
        from_source: v.installed.source.into(),
        to: m.version.to_string(),
        signers: v.signers.iter().map(ToString::to_string).collect(),
        steps,
        space,
    })
}

impl Plan {
    /// The plan as text for a person.
    pub fn render(&self) -> String {
        let mut out = format!(
            "plan: {} {} -> {} (installed version from the {}), signed by {}\n",
            self.name,
            self.from,
            self.to,
            self.from_source,
            self.signers.join(", ")
        );
        for (i, s) in self.steps.iter().enumerate() {
            let size = s
                .bytes
                .map(|b| format!(" [{}]", mib(b)))
                .unwrap_or_default();
            out.push_str(&format!(
                "{:>3}. {:<17} {}{size}\n",
                i + 1,
                s.step,
                s.detail
            ));
        }
        for sp in &self.space {
            out.push_str(&format!(
                "disk: {} need {} at `{}`, {} free: {}\n",
                sp.what,
                mib(sp.needed),
                sp.dir,
                mib(sp.available),
                if sp.fits { "fits" } else { "DOES NOT FIT" }
            ));
        }
        out
    }
}
