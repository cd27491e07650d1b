//! Directories with the owner (root) and mode blastgate's files need.

use std::{
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::Path,
};

use super::Change;

/// Makes `dir` exist as a root-owned directory with exactly `mode`,
/// correcting a looser or foreign one: a spool or CA directory others can
/// read would hand them the records or the CA key.
pub fn ensure(dir: &Path, mode: u32) -> anyhow::Result<Change> {
    let fail = |action: &str, e: io::Error| anyhow::anyhow!("{action} {}: {e}", dir.display());
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .map_err(|e| fail("creating", e))?;
            // The umask may have narrowed `mode`; set it exactly.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .map_err(|e| fail("setting the mode of", e))?;
            return Ok(Change::Created);
        }
        Err(e) => return Err(fail("checking", e)),
    };
    if !meta.is_dir() {
        anyhow::bail!(
            "{} exists and is not a directory (a symlink or a file): move it away",
            dir.display()
        );
    }
    let mut change = Change::Unchanged;
    if meta.uid() != 0 || meta.gid() != 0 {
        std::os::unix::fs::chown(dir, Some(0), Some(0)).map_err(|e| fail("chown root", e))?;
        change = Change::Updated;
    }
    if meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail("setting the mode of", e))?;
        change = Change::Updated;
    }
    Ok(change)
}

/// Makes `dir` exist, with `mode` when it is created; an existing one is
/// left as it is (the directory a config file was named in may be anyone's).
pub fn ensure_exists(dir: &Path, mode: u32) -> anyhow::Result<Change> {
    if dir.is_dir() {
        return Ok(Change::Unchanged);
    }
    ensure(dir, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_leaves_alone_then_tightens() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        assert_eq!(ensure(&dir, 0o700).unwrap(), Change::Created);
        let mode = |d: &Path| std::fs::metadata(d).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(ensure(&dir, 0o700).unwrap(), Change::Unchanged);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(ensure(&dir, 0o700).unwrap(), Change::Updated);
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn a_symlink_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let link = tmp.path().join("spool");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        let e = ensure(&link, 0o700).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}
