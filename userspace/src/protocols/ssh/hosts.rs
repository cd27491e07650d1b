//! What blastgate has learned about each SSH target host, shared by every
//! session of the daemon: the login's home directory, what bare program
//! names resolve to there, and every path an agent wrote through
//! blastgate.
//!
//! The written paths are why an upload never counts as an allow-listed
//! program: whatever name or place the agent gives a file it wrote, the
//! program it later asks to run is looked up here. A write also forgets
//! the target's name resolutions, since a new file can shadow a program on
//! PATH. The memory is bounded; past the bound every path counts as
//! uploaded (fail closed).

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
};

/// Paths remembered per target before every path counts as uploaded.
pub const MAX_WRITTEN: usize = 100_000;
/// Name resolutions cached per target.
const MAX_RESOLVED: usize = 4096;

#[derive(Default)]
struct Host {
    home: Option<String>,
    /// The login shell's PATH, absolute entries only.
    path_dirs: Vec<String>,
    resolved: HashMap<String, String>,
    /// Files, directories and links written.
    written: BTreeSet<String>,
    /// Directories whose contents the client named in a stream blastgate
    /// does not parse (legacy scp sink, rsync receiver): everything under
    /// them counts as written.
    trees: BTreeSet<String>,
    overflow: bool,
}

#[derive(Default)]
pub struct HostMemory {
    hosts: Mutex<HashMap<String, Host>>,
}

impl HostMemory {
    fn with<T>(&self, target: &str, f: impl FnOnce(&mut Host) -> T) -> T {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        f(hosts.entry(target.to_string()).or_default())
    }

    pub fn home(&self, target: &str) -> Option<String> {
        self.with(target, |h| h.home.clone())
    }

    pub fn set_home(&self, target: &str, home: &str, path_dirs: Vec<String>) {
        self.with(target, |h| {
            h.home = Some(home.to_string());
            h.path_dirs = path_dirs;
        });
    }

    /// Whether `dir` is one of the directories of the login shell's PATH.
    pub fn on_path(&self, target: &str, dir: &str) -> bool {
        self.with(target, |h| h.path_dirs.iter().any(|d| d == dir))
    }

    pub fn resolved(&self, target: &str, name: &str) -> Option<String> {
        self.with(target, |h| h.resolved.get(name).cloned())
    }

    pub fn remember(&self, target: &str, name: &str, path: &str) {
        self.with(target, |h| {
            if h.resolved.len() >= MAX_RESOLVED {
                h.resolved.clear();
            }
            h.resolved.insert(name.to_string(), path.to_string());
        });
    }

    /// An agent wrote `path` (absolute, normalized); `tree`: and whatever
    /// lies under it.
    pub fn wrote(&self, target: &str, path: &str, tree: bool) {
        self.with(target, |h| {
            h.resolved.clear();
            if h.written.len() + h.trees.len() >= MAX_WRITTEN {
                h.overflow = true;
                return;
            }
            h.written.insert(path.to_string());
            if tree {
                h.trees.insert(path.to_string());
            }
        });
    }

    /// Whether `path` (absolute, normalized) is something an agent wrote,
    /// or lies in a directory tree it filled.
    pub fn uploaded(&self, target: &str, path: &str) -> bool {
        self.with(target, |h| {
            h.overflow
                || h.written.contains(path)
                || ancestors(path).any(|dir| h.trees.contains(dir))
        })
    }
}

impl HostMemory {
    /// Whether an agent wrote `path`, anything under it, or a tree it lies
    /// in: for a directory a program works in (a repository whose hooks
    /// git runs).
    pub fn touched(&self, target: &str, path: &str) -> bool {
        let under = format!("{}/", path.trim_end_matches('/'));
        self.uploaded(target, path)
            || self.with(target, |h| {
                h.written
                    .range(under.clone()..)
                    .next()
                    .is_some_and(|p| p.starts_with(&under))
            })
    }
}

/// `/a/b/c` → `/a/b/c`, `/a/b`, `/a`, `/`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let cur = next?;
        next = match cur.rfind('/') {
            Some(0) if cur.len() > 1 => Some("/"),
            Some(0) | None => None,
            Some(i) => Some(&cur[..i]),
        };
        Some(cur)
    })
}

/// `path` as the server's kernel will look it up, lexically: relative to
/// `base` (the login's home, or a symlink's directory) unless absolute,
/// with `//`, `.` and trailing `/` dropped and `..` applied. None for an
/// empty path or a NUL byte (the server refuses those). Lexical `..` can
/// differ from the kernel's through a symlink; links are decided as
/// writes on both ends for that reason.
pub fn normalize(base: &str, path: &str) -> Option<String> {
    if path.is_empty() || path.contains('\0') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{base}/{path}")
    };
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// `path` relative to `home` (`.ssh/rc`), "." for home itself, "" when it
/// lies outside.
pub fn home_relative(home: &str, path: &str) -> String {
    if path == home {
        return ".".into();
    }
    let home = home.trim_end_matches('/');
    path.strip_prefix(home)
        .and_then(|rest| rest.strip_prefix('/'))
        .map(str::to_string)
        .unwrap_or_default()
}

/// The directory a path lies in (`/a/b` → `/a`).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_as_the_server_reads_them() {
        let home = "/home/d";
        for (path, want) in [
            (".bashrc", "/home/d/.bashrc"),
            ("./.ssh//rc", "/home/d/.ssh/rc"),
            (
                "x/../.ssh/./authorized_keys",
                "/home/d/.ssh/authorized_keys",
            ),
            ("/home/d/.ssh/.", "/home/d/.ssh"),
            ("//etc/cron.d/x/", "/etc/cron.d/x"),
            ("../../../../etc/profile.d/a.sh", "/etc/profile.d/a.sh"),
            (".", "/home/d"),
        ] {
            assert_eq!(normalize(home, path).as_deref(), Some(want), "{path}");
        }
        assert_eq!(normalize(home, ""), None);
        assert_eq!(normalize(home, "a\0b"), None);
        assert_eq!(home_relative(home, "/home/d/.ssh/rc"), ".ssh/rc");
        assert_eq!(home_relative(home, "/home/d"), ".");
        assert_eq!(home_relative(home, "/home/dx/a"), "");
        assert_eq!(home_relative(home, "/etc/x"), "");
        assert_eq!(parent("/home/d/x"), "/home/d");
        assert_eq!(parent("/x"), "/");
    }

    #[test]
    fn uploads_and_their_trees_are_remembered_per_target() {
        let m = HostMemory::default();
        m.remember("t", "git-upload-pack", "/usr/bin/git-upload-pack");
        m.wrote("t", "/home/d/x/deploy.sh", false);
        assert_eq!(m.resolved("t", "git-upload-pack"), None, "a write forgets");
        m.wrote("t", "/home/d/tree", true);
        assert!(m.uploaded("t", "/home/d/x/deploy.sh"));
        assert!(m.uploaded("t", "/home/d/tree/a/b"));
        assert!(m.uploaded("t", "/home/d/tree"));
        assert!(!m.uploaded("t", "/home/d/treehouse"));
        assert!(!m.uploaded("t", "/home/d/x"));
        assert!(!m.uploaded("other", "/home/d/x/deploy.sh"));
        m.wrote("t", "/home/d/repo/hooks/post-receive", false);
        assert!(m.touched("t", "/home/d/repo"));
        assert!(m.touched("t", "/home/d/repo/"));
        assert!(!m.uploaded("t", "/home/d/repo"));
        assert!(!m.touched("t", "/home/d/rep"));
        assert_eq!(ancestors("/").collect::<Vec<_>>(), ["/"]);
        m.set_home(
            "t",
            "/home/d",
            vec!["/usr/local/bin".into(), "/usr/bin".into()],
        );
        assert!(m.on_path("t", "/usr/bin"));
        assert!(!m.on_path("t", "/home/d"));
    }
}
