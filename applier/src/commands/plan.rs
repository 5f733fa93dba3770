//! `airlock-apply plan`: what `apply` would do here, without changing
//! anything (docs/OPERATIONS.md, "Plan the apply"). The steps are the very
//! list `apply` executes ([`planned_steps`]), with sizes and what each
//! install replaces; the bundle's header is authenticated and checked like
//! `verify` does, the payload is not read.

use std::path::Path;

use airlock_formats::Sha256Digest;

use crate::commands::apply::{space_needs, with_margin};
use crate::error::{ApplyError, StepError};
use crate::lock::LOCK_FILE;
use crate::protocol::{Plan, PlanSpace, PlannedStep, PROTOCOL};
use crate::site::Site;
use crate::state::State;
use crate::steps::backup::{self, hash_file};
use crate::steps::stage::tree_size;
use crate::transaction::step::{planned_steps, Step};
use crate::verify::{read_and_verify, VerifyOptions};

fn mib(bytes: u64) -> String {
    // Precision is not the point of a size in MiB.
    #[allow(clippy::cast_precision_loss)]
    let mib = bytes as f64 / (1024.0 * 1024.0);
    format!("{mib:.1} MiB")
}

fn short(d: &Sha256Digest) -> String {
    d.to_hex().chars().take(12).collect()
}

/// Builds the plan of applying `bundle` here.
///
/// # Errors
/// [`ApplyError::Refused`] when the bundle would be refused; other errors
/// when the site, the state or a database cannot be read.
pub fn plan(site: &Site, bundle: &Path, opts: VerifyOptions) -> Result<Plan, ApplyError> {
    let state = State::open_existing(&site.profile.paths.state_dir)?;
    let v = read_and_verify(site, state.as_ref(), bundle, opts, None)?;
    let m = &v.header.manifest;
    let preflight = |cause: StepError| ApplyError::Preflight {
        step: "plan".into(),
        cause: Box::new(cause),
    };
    let steps = planned_steps(site, m).map_err(preflight)?;
    let planned = steps
        .into_iter()
        .map(|step| {
            let (detail, bytes) = explain(site, m, &step);
            PlannedStep {
                label: step.label().into(),
                detail,
                bytes,
                step,
            }
        })
        .collect();
    let mut notes = Vec::new();
    for database in m.migrated_databases() {
        let path = site
            .profile
            .data
            .databases
            .get(database)
            .map(|p| p.as_path())
            .unwrap_or(Path::new(""));
        let pending = crate::steps::migrate::pending(path, database, m).map_err(preflight)?;
        let all = m.migrations(database).map_err(|e| {
            preflight(StepError::Inconsistent {
                what: e.to_string(),
            })
        })?;
        let Some(first) = all.first() else {
            continue;
        };
        let ups = all
            .iter()
            .filter(|x| x.direction == airlock_formats::Direction::Up)
            .count();
        notes.push(format!(
            "migrate {database}: {} rules ({}), foreign keys {}, history in {}; {} of {ups} pending",
            first.tool,
            if first.info.tool.is_some() {
                "named in the bundle"
            } else {
                "inferred from the layout of an airlock 0.1 bundle"
            },
            if first.foreign_keys { "on" } else { "off" },
            first.history_table,
            pending.len()
        ));
    }
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
        protocol: PROTOCOL,
        name: m.name.clone(),
        from: v.installed.version.to_string(),
        from_source: v.installed.source.into(),
        to: m.version.to_string(),
        signers: v.signers.iter().map(ToString::to_string).collect(),
        checks: vec![
            format!(
                "lock: take `{}`",
                site.profile.paths.state_dir.join(LOCK_FILE).display()
            ),
            format!(
                "verify: signatures ok ({} of {} needed), platform, expiry and version rules ok",
                v.signers.len(),
                v.threshold
            ),
            {
                let (roots, from) = site.install_roots();
                let roots: Vec<String> =
                    roots.iter().map(|r| format!("`{}`", r.display())).collect();
                format!(
                    "install roots: every install lands below {} ({})",
                    roots.join(", "),
                    from.describe()
                )
            },
            "disk space: staging and backups fit (below)".into(),
        ],
        steps: planned,
        notes,
        space,
    })
}

/// What a step will do here, in more words than [`Step::describe`], and the
/// bytes it writes.
fn explain(site: &Site, m: &airlock_formats::Manifest, step: &Step) -> (String, Option<u64>) {
    let detail = step.describe();
    match step {
        Step::Stage { bytes, .. } => (
            format!(
                "{detail}, in `{}`",
                site.staging_dir().join("apply-ID").display()
            ),
            Some(*bytes),
        ),
        // The pre-copies write the backup; the backup steps after the stop
        // rewrite what changed in place.
        Step::PreCopyDatabase { path, .. } => (detail, Some(tree_size(path))),
        Step::PreCopyRaft { dir } => {
            let files = walkdir::WalkDir::new(dir)
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_file())
                .count();
            (format!("{detail}: {files} files"), Some(tree_size(dir)))
        }
        Step::PreCopyFiles { config, installed } => (
            detail,
            Some(config.iter().chain(installed).map(|p| tree_size(p)).sum()),
        ),
        Step::Install { file, target, .. } => {
            let Some(entry) = m.files.iter().find(|e| e.path.as_str() == file) else {
                return (detail, None);
            };
            let change = match hash_file(target).ok() {
                Some((sha, _)) if sha == entry.sha256 => "already identical".to_string(),
                Some((sha, _)) => format!("replaces {} with {}", short(&sha), short(&entry.sha256)),
                None => format!("new file {}", short(&entry.sha256)),
            };
            (format!("{detail}: {change}"), Some(entry.size))
        }
        Step::InstallTree {
            tree,
            target,
            bytes,
            ..
        } => {
            let new: std::collections::BTreeSet<&str> = m
                .tree_files(tree)
                .map(|(_, rel)| rel)
                .chain(
                    m.tree(tree)
                        .into_iter()
                        .flat_map(|t| t.links.iter().map(|l| l.path.as_str())),
                )
                .collect();
            let old: Vec<String> = walkdir::WalkDir::new(target)
                .min_depth(1)
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| !e.file_type().is_dir())
                .filter_map(|e| {
                    e.path()
                        .strip_prefix(target)
                        .ok()
                        .map(|p| p.to_string_lossy().into_owned())
                })
                .collect();
            let change = if !target.exists() {
                "a new folder".to_string()
            } else {
                let gone = old.iter().filter(|p| !new.contains(p.as_str())).count();
                format!(
                    "replaces a tree of {} files and links ({gone} not in the new one: removed)",
                    old.len()
                )
            };
            (format!("{detail}; {change}"), Some(*bytes))
        }
        Step::Commit { version } => {
            let complete = backup::list(&site.profile.paths.backup_dir)
                .map(|all| all.into_iter().filter(|b| b.manifest.is_some()).count())
                .unwrap_or(0);
            let keep = site.profile.paths.keep_backups;
            (
                format!(
                    "record {version} as installed; keep {keep} backup(s), removing {}",
                    (complete + 1).saturating_sub(keep)
                ),
                None,
            )
        }
        _ => (detail, None),
    }
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
        for check in &self.checks {
            out.push_str(&format!("     {check}\n"));
        }
        for (i, s) in self.steps.iter().enumerate() {
            let size = s
                .bytes
                .map(|b| format!(" [{}]", mib(b)))
                .unwrap_or_default();
            out.push_str(&format!(
                "{:>3}. {:<17} {}{size}\n",
                i + 1,
                s.label,
                s.detail
            ));
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
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
