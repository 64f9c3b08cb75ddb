//! Local file sources are read only under the data roots. A location is resolved the way the
//! kernel will resolve it (`file://` stripped, relative to the working directory, `..` and
//! symlinks followed) and then checked; the file actually opened is checked once more through
//! `/proc/self/fd`, so swapping a path component for a symlink after the check does not help.
//!
//! A location that does not exist is refused with the same answer as one outside the roots unless
//! its path lies inside a root, so the refusal does not tell whether a file exists elsewhere.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

/// Folders the kernel fills with process and device state: never a data source.
const SYSTEM_DIRS: &[&str] = &["/proc", "/sys", "/dev"];

/// Why a location may not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "'{location}' is outside the data roots this process may read ({roots}); an operator adds folders with sources.local_roots (CARGA_LOCAL_ROOTS)"
    )]
    OutsideRoots { location: String, roots: String },
    #[error("'{location}' is {what}, which no dataset may read")]
    Protected { location: String, what: String },
}

impl Refusal {
    /// The rule that refused, for the audit log.
    pub fn rule(&self) -> &'static str {
        match self {
            Refusal::OutsideRoots { .. } => "outside the data roots",
            Refusal::Protected { .. } => "protected path",
        }
    }
}

/// The data roots and the protected paths inside or beside them.
#[derive(Debug, Clone)]
pub struct LocalRoots {
    roots: Vec<PathBuf>,
    protected: Vec<(PathBuf, String)>,
}

impl LocalRoots {
    /// Roots that do not exist are kept in their lexical form (nothing is under them yet).
    pub fn new(roots: impl IntoIterator<Item = PathBuf>) -> Self {
        let roots = roots.into_iter().map(|r| resolve(&r)).collect();
        let protected = SYSTEM_DIRS
            .iter()
            .map(|d| (PathBuf::from(d), "a system folder".to_owned()))
            .collect();
        Self { roots, protected }
    }

    /// Protects `path` (a file, or a folder and all under it) whatever the roots say.
    pub fn protect(mut self, path: &Path, what: &str) -> Self {
        self.protected.push((resolve(path), what.to_owned()));
        self
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The resolved path of `location` if it may be read; the file need not exist, but then
    /// only a path inside a root gets past the check (and fails later as not found).
    pub fn check(&self, location: &str) -> Result<PathBuf, Refusal> {
        let path = Path::new(location.strip_prefix("file://").unwrap_or(location));
        let resolved = resolve(path);
        self.check_resolved(location, &resolved)?;
        Ok(resolved)
    }

    /// Opens a checked path and checks the file the kernel opened.
    pub fn open(&self, location: &str, resolved: &Path) -> std::io::Result<File> {
        let file = File::open(resolved)?;
        if let Some(opened) = opened_path(&file)
            && let Err(refusal) = self.check_resolved(location, &opened)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                refusal,
            ));
        }
        Ok(file)
    }

    fn check_resolved(&self, location: &str, resolved: &Path) -> Result<(), Refusal> {
        if let Some((_, what)) = self.protected.iter().find(|(p, _)| resolved.starts_with(p)) {
            return Err(Refusal::Protected {
                location: location.to_owned(),
                what: what.clone(),
            });
        }
        if self.roots.iter().any(|root| resolved.starts_with(root)) {
            return Ok(());
        }
        let roots = if self.roots.is_empty() {
            "none".to_owned()
        } else {
            self.roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(Refusal::OutsideRoots {
            location: location.to_owned(),
            roots,
        })
    }
}

/// The canonical path when it exists (symlinks followed); otherwise the longest existing
/// ancestor canonicalised with the rest appended lexically (`..` folded).
fn resolve(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let lexical = fold_dots(&absolute);
    if let Ok(canonical) = lexical.canonicalize() {
        return canonical;
    }
    let mut existing = lexical.clone();
    let mut rest = Vec::new();
    while let Some(parent) = existing.parent().map(Path::to_owned) {
        if let Some(name) = existing.file_name() {
            rest.push(name.to_owned());
        }
        existing = parent;
        if let Ok(canonical) = existing.canonicalize() {
            let mut out = canonical;
            for name in rest.iter().rev() {
                out.push(name);
            }
            return out;
        }
    }
    lexical
}

/// `/a/b/../c/./d` → `/a/c/d`, without touching the file system.
fn fold_dots(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The path of an open file as the kernel sees it (Linux); `None` elsewhere.
fn opened_path(file: &File) -> Option<PathBuf> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_a_root_are_readable() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("ok.csv"), "a\n1\n").unwrap();
        std::fs::write(dir.path().join("outside.csv"), "a\n1\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside.csv"), root.join("link.csv")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        let roots = LocalRoots::new([root.clone()]);
        let ok = root.join("ok.csv").display().to_string();
        assert!(roots.check(&ok).is_ok());
        assert!(roots.check(&format!("file://{ok}")).is_ok());
        let refused = [
            "/etc/passwd".to_owned(),
            "file:///etc/passwd".to_owned(),
            format!("{}/../outside.csv", root.display()),
            root.join("link.csv").display().to_string(),
            root.join("etc/hostname").display().to_string(),
            "/proc/self/environ".to_owned(),
            "../../../../../../../../etc/hostname".to_owned(),
        ];
        for location in refused {
            assert!(roots.check(&location).is_err(), "{location} passed");
        }
        // A missing file outside the roots is refused like an existing one: no existence oracle.
        let missing = roots.check("/etc/no-such-file").unwrap_err();
        let present = roots.check("/etc/passwd").unwrap_err();
        assert_eq!(missing.rule(), present.rule());
        // A missing file inside a root passes the check and fails when opened.
        assert!(
            roots
                .check(&root.join("later.csv").display().to_string())
                .is_ok()
        );
    }

    #[test]
    fn protected_paths_stay_closed_inside_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.json");
        std::fs::write(&keys, "{}").unwrap();
        let state = dir.path().join(".carga");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("admin-token"), "t").unwrap();
        let roots = LocalRoots::new([dir.path().to_owned()])
            .protect(&keys, "the master key file")
            .protect(&state, "Carga's state folder");
        let err = roots.check(&keys.display().to_string()).unwrap_err();
        assert!(err.to_string().contains("master key file"), "{err}");
        assert!(
            roots
                .check(&state.join("admin-token").display().to_string())
                .is_err()
        );
        assert!(
            LocalRoots::new([PathBuf::from("/")])
                .check("/dev/zero")
                .is_err()
        );
    }

    #[test]
    fn the_opened_file_is_checked_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir(&root).unwrap();
        let file = root.join("f.csv");
        std::fs::write(&file, "a\n").unwrap();
        let roots = LocalRoots::new([root.clone()]);
        let location = file.display().to_string();
        let resolved = roots.check(&location).unwrap();
        // The checked path is swapped for a symlink out of the root before it is opened.
        std::fs::remove_file(&file).unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), &file).unwrap();
        let err = roots.open(&location, &resolved).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    }
}
