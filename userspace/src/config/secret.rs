//! Secrets blastgate holds for targets (upstream passwords, API tokens),
//! read where they live at each use so that rotation needs no restart.
//!
//! A file is read again only when it changed: each use costs one `stat`,
//! not an open and a read (a request per second per agent made the
//! credential file the hottest read in the HTTP gateway). Any change the
//! kernel reports for the file — a write, a rename of a new file over it,
//! a `touch` — counts, so a rotated secret is used from the next use on.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
};

use serde::Deserialize;

/// A secret blastgate holds for a target: read from a file (first line)
/// or an environment variable of the daemon. Never logged, never sent to
/// an agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub env: Option<String>,
}

impl Secret {
    pub fn read(&self) -> Result<String, String> {
        match (&self.file, &self.env) {
            (Some(f), None) => read_file(f),
            (None, Some(v)) => {
                std::env::var(v).map_err(|_| format!("secret environment variable {v} is not set"))
            }
            _ => Err("a secret needs exactly one of `file` or `env`".into()),
        }
    }
}

/// What tells one version of a file from the next without reading it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Version {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Version {
    fn of(m: &std::fs::Metadata) -> Version {
        Version {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

impl Version {
    /// Changed so lately that another change within the same timestamp
    /// tick (file times are coarse, a few milliseconds) would look the
    /// same: not trusted yet, read again.
    fn recent(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        now - self.ctime.0 < 2
    }
}

fn cache() -> &'static Mutex<HashMap<PathBuf, (Version, String)>> {
    static C: OnceLock<Mutex<HashMap<PathBuf, (Version, String)>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

fn read_file(path: &Path) -> Result<String, String> {
    let failed = |e: std::io::Error| format!("secret file {}: {e}", path.display());
    let version = Version::of(&std::fs::metadata(path).map_err(failed)?);
    let mut cached = cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some((v, value)) = cached.get(path) {
        if *v == version && !version.recent() {
            return Ok(value.clone());
        }
    }
    let text = std::fs::read_to_string(path).map_err(failed)?;
    let value = text.lines().next().unwrap_or_default().to_string();
    // Stamped with what was read (not what was stat'ed before): a change
    // between the two is seen at the next use.
    let read_version = std::fs::metadata(path).map(|m| Version::of(&m)).ok();
    match read_version {
        Some(v) if v == version => {
            cached.insert(path.to_path_buf(), (v, value.clone()));
        }
        _ => {
            cached.remove(path);
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(path: &Path) -> Secret {
        Secret {
            file: Some(path.to_path_buf()),
            env: None,
        }
    }

    #[test]
    fn a_rotated_file_is_read_again_however_it_was_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\nignored\n").unwrap();
        assert_eq!(secret(&path).read().unwrap(), "first");
        // Same size, written in place within the same timestamp tick.
        std::fs::write(&path, "secnd\nignored\n").unwrap();
        assert_eq!(secret(&path).read().unwrap(), "secnd");
        // A new file renamed over it (how most tools rotate).
        let next = dir.path().join("token.new");
        std::fs::write(&next, "third\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(secret(&path).read().unwrap(), "third");
        std::fs::remove_file(&path).unwrap();
        let gone = secret(&path).read().unwrap_err();
        assert!(gone.contains("token"), "{gone}");
    }

    #[test]
    fn exactly_one_source_is_required() {
        let both = Secret {
            file: Some("/nonexistent".into()),
            env: Some("X".into()),
        };
        assert!(both.read().is_err());
    }
}
