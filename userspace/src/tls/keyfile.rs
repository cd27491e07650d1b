//! Writing key material to disk, shared by both certificate authorities.

use std::{
    fs::{self, OpenOptions, Permissions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

/// Writes through a temporary file in the same directory and renames it
/// into place, so a crash never leaves a truncated file that would later
/// fail to parse. The temporary file is created with `mode` already
/// applied, so a private key is never readable by others, not even for an
/// instant. The temporary name is random rather than pid-based: in
/// containers the daemon is often pid 1 every time, and a stale temp file
/// from a crash would otherwise block creation forever.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{file_name}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask can only remove bits from `mode`; set it exactly so the
        // result does not depend on the caller's environment.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}
