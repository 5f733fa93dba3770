//! Reads a `[[tree]]` source folder (docs/FORMAT.md, "`[[tree]]`"): its
//! folders, regular files and symbolic links, in a stable order. A link must
//! point, relatively, to a file or folder of the same tree without passing
//! through another link ([`TreeShape::check_link`], the rule readers apply
//! too); any other link, and any special file, is refused with the path.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use airlock_formats::manifest::{validate_install_path, validate_name};
use airlock_formats::tree::TreeShape;
use airlock_formats::{BundlePath, Tree, TreeLink};

use crate::error::BuildError;
use crate::spec::TreeSpec;

/// One regular file of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    /// The file on disk.
    pub source: PathBuf,
    /// Path relative to the tree's root.
    pub relative: BundlePath,
    /// Permission bits it is installed with.
    pub mode: u32,
}

fn bad(path: &Path, reason: impl Into<String>) -> BuildError {
    BuildError::Tree {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Reads the tree of `spec`, whose `source` is relative to `base`: the
/// manifest's [`Tree`] and its files, sorted by path.
///
/// # Errors
/// [`BuildError::Tree`] naming the file or folder: a source that is not a
/// folder, a name that is not UTF-8 or not a bundle path, a special file, a
/// link whose target is not UTF-8 or leaves the tree (or dangles, or passes
/// through another link), an invalid name or install path.
pub fn read_tree(spec: &TreeSpec, base: &Path) -> Result<(Tree, Vec<TreeFile>), BuildError> {
    let root = base.join(&spec.source);
    let name = match &spec.name {
        Some(n) => n.clone(),
        None => Path::new(&spec.install_path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    validate_name(&name).map_err(|r| bad(&root, format!("tree name: {r}")))?;
    validate_install_path(&spec.install_path).map_err(|r| bad(&root, r))?;
    // BuildError::Tree names the folder; fs-err would name it twice.
    #[allow(clippy::disallowed_methods)]
    let meta = std::fs::metadata(&root).map_err(|e| bad(&root, e.to_string()))?;
    if !meta.is_dir() {
        return Err(bad(&root, "is not a folder; a [[tree]] source is a folder"));
    }
    let mut dirs = Vec::new();
    let mut links = Vec::new();
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(&root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| bad(&root, e.to_string()))?;
        let path = entry.path();
        let rel = path
            .strip_prefix(&root)
            .ok()
            .and_then(Path::to_str)
            .ok_or_else(|| bad(path, "the name is not UTF-8"))?;
        let relative = BundlePath::parse(rel).map_err(|e| bad(path, e.to_string()))?;
        let kind = entry.file_type();
        if kind.is_dir() {
            dirs.push(relative);
        } else if kind.is_file() {
            let meta = entry.metadata().map_err(|e| bad(path, e.to_string()))?;
            files.push(TreeFile {
                source: path.to_owned(),
                relative,
                mode: spec.file_mode.unwrap_or(meta.permissions().mode() & 0o777),
            });
        } else if kind.is_symlink() {
            #[allow(clippy::disallowed_methods)]
            let target = std::fs::read_link(path).map_err(|e| bad(path, e.to_string()))?;
            let target = target
                .to_str()
                .ok_or_else(|| bad(path, "the link's target is not UTF-8"))?
                .to_owned();
            links.push(TreeLink {
                path: relative,
                target,
            });
        } else {
            return Err(bad(path, "is a special file (device, socket or FIFO); a tree holds folders, regular files and links"));
        }
    }
    dirs.sort();
    links.sort();
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    let shape = TreeShape {
        files: files.iter().map(|f| f.relative.as_str()).collect(),
        dirs: dirs.iter().map(BundlePath::as_str).collect(),
        links: links.iter().map(|l| l.path.as_str()).collect(),
    };
    shape.check().map_err(|r| bad(&root, r))?;
    for link in &links {
        shape
            .check_link(link)
            .map_err(|r| bad(&link.path.join_to(&root), r))?;
    }
    Ok((
        Tree {
            name,
            install_path: spec.install_path.clone(),
            dir_mode: spec.dir_mode,
            dirs,
            links,
        },
        files,
    ))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn spec(source: &Path) -> TreeSpec {
        TreeSpec {
            name: None,
            source: source.to_owned(),
            install_path: "/opt/demo/static".into(),
            file_mode: None,
            dir_mode: 0o755,
        }
    }

    #[test]
    fn reads_folders_files_and_links_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("static");
        fs::create_dir_all(root.join("a/pkg")).unwrap();
        fs::create_dir_all(root.join("b/pkg")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::write(root.join("a/pkg/__init__.py"), "a").unwrap();
        fs::write(root.join("b/pkg/__init__.py"), "b").unwrap();
        fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("a/pkg/__init__.py", root.join("latest")).unwrap();
        let (tree, files) = read_tree(&spec(Path::new("static")), dir.path()).unwrap();
        assert_eq!(tree.name, "static");
        let dirs: Vec<_> = tree.dirs.iter().map(BundlePath::as_str).collect();
        assert_eq!(dirs, ["a", "a/pkg", "b", "b/pkg", "empty"]);
        let rels: Vec<_> = files.iter().map(|f| f.relative.as_str()).collect();
        assert_eq!(rels, ["a/pkg/__init__.py", "b/pkg/__init__.py", "run.sh"]);
        assert_eq!(files[2].mode, 0o750);
        assert_eq!(tree.links[0].target, "a/pkg/__init__.py");
    }

    #[test]
    fn a_link_out_of_the_tree_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("static");
        fs::create_dir_all(root.join("css")).unwrap();
        symlink("../../etc/passwd", root.join("css/evil")).unwrap();
        let err = read_tree(&spec(Path::new("static")), dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("css/evil"), "{err}");
        assert!(err.contains("leaves the tree"), "{err}");
    }
}
