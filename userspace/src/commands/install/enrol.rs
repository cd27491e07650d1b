//! Enrolling a local user (a CI runner's account) by uid in the config
//! file, edited in place so the admin's comments and layout survive.

use std::{os::unix::fs::PermissionsExt, path::Path};

use toml_edit::{value, Array, DocumentMut, InlineTable, Item, Table, Value};

use super::Change;
use crate::{config::Config, identity::users, tls::keyfile::write_atomically};

/// Written when there is no config file yet (a host without the package):
/// the defaults are the secure ones, so an empty file is a complete config.
const NEW_CONFIG: &str = "\
# blastgate's configuration, created by `blastgate install`.
# Every section and its defaults: README \"Configuration\". The defaults are
# the secure ones: nothing is enrolled, unknown destinations are refused and
# the policies shipped in the binary apply.
";

pub fn ensure_config_file(path: &Path) -> anyhow::Result<Change> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(Change::Unchanged),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomically(path, NEW_CONFIG.as_bytes(), 0o644)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            Ok(Change::Created)
        }
        Err(e) => Err(anyhow::anyhow!("checking {}: {e}", path.display())),
    }
}

/// Adds `{ uid = N, agent = "NAME" }` to `[enrol] uids` unless that uid is
/// there already. The edited text must load as a config before it replaces
/// the file, so a failed enrolment leaves the last good config.
pub fn enrol_user(
    path: &Path,
    spec: &str,
    agent: Option<&str>,
) -> anyhow::Result<(Change, String)> {
    let user = users::lookup(spec)
        .ok_or_else(|| anyhow::anyhow!("--enrol-user {spec}: no such local user"))?;
    if user.uid == 0 {
        anyhow::bail!(
            "--enrol-user {spec}: root cannot be enrolled (the daemon runs as root); enrol the \
             runner's own account"
        );
    }
    let name = agent.unwrap_or(&user.name);
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    Config::parse(&text, path)
        .map_err(|e| anyhow::anyhow!("the config is invalid as it is, fix it first: {e}"))?;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let what = format!(
        "user {} (uid {}) enrolled as agent {name:?}",
        user.name, user.uid
    );
    let change = put_uid(&mut doc, user.uid, name, agent.is_some())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if change == Change::Unchanged {
        return Ok((change, what));
    }
    let next = doc.to_string();
    Config::parse(&next, path)
        .map_err(|e| anyhow::anyhow!("enrolling {spec} would make the config invalid: {e}"))?;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    write_atomically(path, next.as_bytes(), mode)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok((change, what))
}

/// The edit itself. An entry for the uid that names another agent is only
/// renamed when the caller asked for a name (`--agent`): a rerun without it
/// must not undo an admin's choice.
fn put_uid(doc: &mut DocumentMut, uid: u32, agent: &str, named: bool) -> Result<Change, String> {
    let enrol = doc
        .entry("enrol")
        .or_insert_with(|| Item::Table(Table::new()))
        .as_table_like_mut()
        .ok_or("[enrol] is not a table")?;
    let uids = enrol
        .entry("uids")
        .or_insert(value(Array::new()))
        .as_array_mut()
        .ok_or("enrol.uids is not an array")?;
    for entry in uids.iter_mut() {
        match entry {
            Value::Integer(n) if *n.value() == i64::from(uid) => {
                if !named {
                    return Ok(Change::Unchanged);
                }
                *entry = Value::InlineTable(rule(uid, agent));
                return Ok(Change::Updated);
            }
            Value::InlineTable(t) if uid_of(t) == Some(i64::from(uid)) => {
                let current = t.get("agent").and_then(Value::as_str);
                if current == Some(agent) || !named {
                    return Ok(Change::Unchanged);
                }
                t.insert("agent", agent.into());
                return Ok(Change::Updated);
            }
            _ => {}
        }
    }
    uids.push(Value::InlineTable(rule(uid, agent)));
    uids.fmt();
    Ok(Change::Created)
}

fn rule(uid: u32, agent: &str) -> InlineTable {
    let mut t = InlineTable::new();
    t.insert("uid", i64::from(uid).into());
    t.insert("agent", agent.into());
    t
}

fn uid_of(t: &InlineTable) -> Option<i64> {
    t.get("uid")
        .or_else(|| t.get("value"))
        .and_then(Value::as_integer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(text: &str, uid: u32, agent: &str, named: bool) -> (Change, String) {
        let mut doc: DocumentMut = text.parse().unwrap();
        let change = put_uid(&mut doc, uid, agent, named).unwrap();
        (change, doc.to_string())
    }

    #[test]
    fn comments_and_other_entries_survive_and_reruns_change_nothing() {
        let text = "# my runners\n[enrol]\n# the old one\nuids = [1001]\n\n[proxy]\n";
        let (change, next) = edit(text, 1002, "github-runner", false);
        assert_eq!(change, Change::Created);
        assert!(
            next.starts_with("# my runners\n[enrol]\n# the old one\n"),
            "{next}"
        );
        let cfg = Config::parse(&next, Path::new("x")).unwrap();
        assert_eq!(cfg.enrol.uids.len(), 2);
        assert_eq!(cfg.enrol.uids[1].value(), 1002);
        assert_eq!(cfg.enrol.uids[1].agent(|_| String::new()), "github-runner");
        assert_eq!(
            edit(&next, 1002, "github-runner", false),
            (Change::Unchanged, next.clone())
        );
        // The bare entry the admin wrote is left as it is without --agent.
        assert_eq!(edit(&next, 1001, "x", false).0, Change::Unchanged);
        assert_eq!(edit(&next, 1001, "x", true).0, Change::Updated);
    }

    #[test]
    fn an_empty_file_gets_an_enrol_table() {
        let (change, next) = edit(NEW_CONFIG, 1005, "ci", false);
        assert_eq!(change, Change::Created);
        let cfg = Config::parse(&next, Path::new("x")).unwrap();
        assert_eq!(cfg.enrol.uids[0].value(), 1005);
    }

    #[test]
    fn a_uids_key_of_another_type_is_an_error_not_a_rewrite() {
        let mut doc: DocumentMut = "[enrol]\nuids = \"1001\"\n".parse().unwrap();
        assert!(put_uid(&mut doc, 1002, "ci", false).is_err());
    }
}
