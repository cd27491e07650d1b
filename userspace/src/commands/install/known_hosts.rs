//! blastgate's block in the host-wide OpenSSH known_hosts file: the
//! `@cert-authority` lines for its SSH CA, between markers so that reruns
//! replace only them and the admin's own lines stay as they are.

use std::path::Path;

use super::Change;
use crate::tls::keyfile::write_atomically;

pub const SSH_KNOWN_HOSTS: &str = "/etc/ssh/ssh_known_hosts";

const BEGIN: &str =
    "# BEGIN blastgate: written by `blastgate install`; lines in here are replaced on reruns";
const END: &str = "# END blastgate";

/// Makes the block hold exactly `lines` (no block when there are none).
pub fn put_block(path: &Path, lines: &[String]) -> anyhow::Result<Change> {
    let current = read(path)?;
    let (before, had, after) = split(&current)?;
    let mut next = String::from(before);
    if !lines.is_empty() {
        if !next.is_empty() && !next.ends_with('\n') {
            next.push('\n');
        }
        next.push_str(BEGIN);
        next.push('\n');
        for line in lines {
            next.push_str(line);
            next.push('\n');
        }
        next.push_str(END);
        next.push('\n');
    }
    next.push_str(after);
    if next == current {
        return Ok(Change::Unchanged);
    }
    if next.is_empty() {
        // Only blastgate's block was there: the file was install's.
        std::fs::remove_file(path)
            .map_err(|e| anyhow::anyhow!("removing {}: {e}", path.display()))?;
    } else {
        write(path, &next)?;
    }
    Ok(match (had, lines.is_empty()) {
        (false, _) => Change::Created,
        (true, true) => Change::Removed,
        (true, false) => Change::Updated,
    })
}

pub fn remove_block(path: &Path) -> anyhow::Result<Change> {
    match put_block(path, &[])? {
        Change::Unchanged => Ok(Change::Unchanged),
        _ => Ok(Change::Removed),
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    // World-readable, as sshd and every client read it.
    write_atomically(path, text.as_bytes(), 0o644)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

/// The text before blastgate's block, whether there was one, and the text
/// after it. A begin marker without its end is refused rather than guessed
/// at: removing "up to the end of the file" could drop an admin's lines.
fn split(text: &str) -> anyhow::Result<(&str, bool, &str)> {
    let Some(start) = line_start(text, BEGIN) else {
        return Ok((text, false, ""));
    };
    let rest = &text[start..];
    let Some(end) = line_start(rest, END) else {
        anyhow::bail!(
            "{SSH_KNOWN_HOSTS} has blastgate's begin marker but no {END:?} line: fix it by hand"
        );
    };
    let after = &rest[end..];
    let after = after.split_once('\n').map_or("", |(_, tail)| tail);
    Ok((&text[..start], true, after))
}

/// The offset of the line that is exactly `marker`.
fn line_start(text: &str, marker: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end_matches('\n') == marker {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_is_added_replaced_and_removed_around_the_admins_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("known_hosts");
        std::fs::write(&path, "host1 ssh-ed25519 AAAA\n").unwrap();
        let a = vec!["@cert-authority a ssh-ed25519 K".to_string()];
        assert_eq!(put_block(&path, &a).unwrap(), Change::Created);
        assert_eq!(put_block(&path, &a).unwrap(), Change::Unchanged);
        std::fs::write(
            &path,
            format!(
                "{}host2 ssh-rsa BBBB\n",
                std::fs::read_to_string(&path).unwrap()
            ),
        )
        .unwrap();
        let b = vec!["@cert-authority b ssh-ed25519 K".to_string()];
        assert_eq!(put_block(&path, &b).unwrap(), Change::Updated);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!(
                "host1 ssh-ed25519 AAAA\n{BEGIN}\n{}\n{END}\nhost2 ssh-rsa BBBB\n",
                b[0]
            )
        );
        assert_eq!(remove_block(&path).unwrap(), Change::Removed);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "host1 ssh-ed25519 AAAA\nhost2 ssh-rsa BBBB\n"
        );
        assert_eq!(remove_block(&path).unwrap(), Change::Unchanged);
        // A file that held only the block goes with it.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(put_block(&path, &a).unwrap(), Change::Created);
        assert_eq!(remove_block(&path).unwrap(), Change::Removed);
        assert!(!path.exists());
    }

    #[test]
    fn a_missing_file_stays_missing_without_lines_and_a_torn_block_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("known_hosts");
        assert_eq!(put_block(&path, &[]).unwrap(), Change::Unchanged);
        assert!(!path.exists());
        std::fs::write(&path, format!("{BEGIN}\nx\nadmin line\n")).unwrap();
        let e = put_block(&path, &["l".into()]).unwrap_err().to_string();
        assert!(e.contains("no \"# END blastgate\" line"), "{e}");
    }
}
