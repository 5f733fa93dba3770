//! Folder trees a bundle installs as a whole (docs/FORMAT.md, "Trees"): the
//! files are payload entries `trees/NAME/PATH` of role `tree`; the folders,
//! empty ones included, and the symbolic links are listed in the manifest,
//! so the payload stays regular files only. A link's target is relative and
//! resolves, without leaving the tree and without passing through another
//! link, to a file or folder of the same tree: installed, it cannot point
//! anywhere the tree does not control.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::path::BundlePath;

/// Folder permission bits when a spec names none (`rwxr-xr-x`).
pub const DEFAULT_DIR_MODE: u32 = 0o755;

/// One tree of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tree {
    /// The tree's name (a [name](crate::manifest::validate_name)); its files
    /// are stored as `trees/NAME/PATH`, and the site may remap its install
    /// path under `[trees]`.
    pub name: String,
    /// The absolute folder it replaces as a whole.
    pub install_path: String,
    /// Permission bits of its folders, at most `0o777`.
    pub dir_mode: u32,
    /// Every folder below the root, relative, sorted, parents before
    /// children; empty folders included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<BundlePath>,
    /// Its symbolic links, sorted by path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<TreeLink>,
}

/// A symbolic link of a tree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeLink {
    /// The link, relative to the tree's root.
    pub path: BundlePath,
    /// What it points to, exactly as the link holds it: relative to the
    /// link's folder, e.g. `../css/site.css`.
    pub target: String,
}

/// The parent folder of a relative path, `""` for the root.
fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// What a tree holds, by relative path, for checking links.
#[derive(Debug, Default)]
pub struct TreeShape<'a> {
    /// Regular files.
    pub files: BTreeSet<&'a str>,
    /// Folders (the root is `""` and always there).
    pub dirs: BTreeSet<&'a str>,
    /// Links.
    pub links: BTreeSet<&'a str>,
}

impl<'a> TreeShape<'a> {
    /// Checks the shape: every file, folder and link has its parent folder
    /// listed, and no path is two things.
    ///
    /// # Errors
    /// The rule broken, naming the path.
    pub fn check(&self) -> Result<(), String> {
        let all = self
            .files
            .iter()
            .map(|p| (p, "file"))
            .chain(self.dirs.iter().map(|p| (p, "folder")))
            .chain(self.links.iter().map(|p| (p, "link")));
        let mut seen = BTreeSet::new();
        for (path, what) in all {
            if !seen.insert(*path) {
                return Err(format!("`{path}` is listed twice (as a {what} too)"));
            }
            let up = parent(path);
            if !up.is_empty() && !self.dirs.contains(up) {
                return Err(format!(
                    "{what} `{path}` is in `{up}`, which is not a listed folder"
                ));
            }
        }
        Ok(())
    }

    /// Checks that `link`'s target is relative and resolves, component by
    /// component from the link's folder, to a file or folder of the tree:
    /// never above the root, and never through a link or a file on the
    /// way. Then the link means the same installed as it does here.
    ///
    /// # Errors
    /// Why the target is refused, naming the link and its target.
    pub fn check_link(&self, link: &TreeLink) -> Result<(), String> {
        let refuse = |why: &str| {
            Err(format!(
                "link `{}` -> `{}` {why}; a tree's links must point to a file or folder of the same tree, relatively",
                link.path,
                crate::shown::shown(&link.target)
            ))
        };
        let target = link.target.as_str();
        if target.is_empty() {
            return refuse("is empty");
        }
        if target.starts_with('/') {
            return refuse("is absolute");
        }
        if target.contains('\0') || target.contains('\\') || !crate::shown::is_safe(target) {
            return refuse("holds a NUL, a backslash or a control character");
        }
        let mut at: Vec<&str> = parent(link.path.as_str())
            .split('/')
            .filter(|c| !c.is_empty())
            .collect();
        let components: Vec<&str> = target.split('/').collect();
        for (i, component) in components.iter().enumerate() {
            match *component {
                "" | "." => continue,
                ".." => {
                    if at.pop().is_none() {
                        return refuse("leaves the tree");
                    }
                }
                name => at.push(name),
            }
            let here = at.join("/");
            let last = components[i + 1..]
                .iter()
                .all(|c| c.is_empty() || *c == ".");
            if self.links.contains(here.as_str()) {
                return refuse("passes through another link");
            }
            if !last && !here.is_empty() && !self.dirs.contains(here.as_str()) {
                return refuse("passes through something that is not a folder of the tree");
            }
            if last
                && !here.is_empty()
                && !self.dirs.contains(here.as_str())
                && !self.files.contains(here.as_str())
            {
                return refuse("points to nothing in the tree");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(path: &str, target: &str) -> TreeLink {
        TreeLink {
            path: BundlePath::parse(path).unwrap(),
            target: target.into(),
        }
    }

    fn shape() -> TreeShape<'static> {
        TreeShape {
            files: ["css/site.css", "index.html", "js/app/main.js"].into(),
            dirs: ["css", "js", "js/app", "img"].into(),
            links: ["latest.css", "js/app/style", "loop"].into(),
        }
    }

    #[test]
    fn links_inside_the_tree_are_accepted() {
        let s = shape();
        s.check().unwrap();
        for (path, target) in [
            ("latest.css", "css/site.css"),
            ("js/app/style", "../../css/site.css"),
            ("js/app/style", "../../css"),
            ("latest.css", "./css/./site.css"),
            ("js/app/style", ".."),
            ("js/app/style", "../.."),
        ] {
            s.check_link(&link(path, target)).unwrap();
        }
    }

    #[test]
    fn links_that_leave_or_dangle_or_chain_are_refused() {
        let s = shape();
        for (path, target, why) in [
            ("latest.css", "../etc/passwd", "leaves the tree"),
            ("js/app/style", "../../../x", "leaves the tree"),
            ("latest.css", "/etc/passwd", "is absolute"),
            ("latest.css", "", "is empty"),
            ("latest.css", "css/missing.css", "points to nothing"),
            ("js/app/style", "../../loop", "passes through another link"),
            (
                "latest.css",
                "loop/../css/site.css",
                "passes through another link",
            ),
            ("latest.css", "index.html/x", "not a folder"),
        ] {
            let err = s.check_link(&link(path, target)).unwrap_err();
            assert!(err.contains(why), "{path} -> {target}: {err}");
        }
    }

    #[test]
    fn every_entry_needs_its_folder_listed_once() {
        let mut s = shape();
        s.files.insert("fonts/a.woff");
        assert!(s.check().unwrap_err().contains("not a listed folder"));
        let mut s = shape();
        s.files.insert("css");
        assert!(s.check().unwrap_err().contains("listed twice"));
    }
}
