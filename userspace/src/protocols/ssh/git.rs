//! `git-receive-pack` over SSH: the agent's push is held back until every
//! ref update in it has been ruled on as `git:push`, then only the
//! allowed updates reach the server (see [`crate::protocols::git`]).
//!
//! Whether an update is a fast-forward is read from the pushed commits;
//! where their history leaves the pack (commits the server already has),
//! the server itself is asked, over blastgate's own connection, whether
//! the old value is an ancestor of each commit the walk reached (`git
//! merge-base --is-ancestor`, in the repository the agent named, found
//! the way receive-pack finds it). No answer: `forced = "unknown"`.

use std::collections::HashMap;

use crate::{
    protocols::git::{
        pack::{hex, Oid},
        push::{self, Forced, Update},
        Parsed,
    },
    records::{EventKind, Verdict},
};

use super::channel::{refusal, rule_on, Job};

/// Most commits outside the pack blastgate asks the server about for one
/// update; past it the update is `unknown`.
const MAX_ASKS: usize = 16;

/// What goes upstream after the ruling.
pub struct Forward {
    /// The rewritten commands (and pack, if any allowed update needs it).
    pub bytes: Vec<u8>,
    /// Later agent data goes upstream too (the rest of a pack the server
    /// reads); false: it is dropped.
    pub pass_rest: bool,
    /// Answered here: the whole report when the server gets no command.
    pub answer: Option<Vec<u8>>,
    /// `ng` lines for the server's report, and whether it is side-banded.
    pub refused: Vec<(String, String)>,
    pub sideband: bool,
}

/// Rules on every update of `parsed` (recording each); Err: the agent
/// left during a decision, or cannot be told of a refusal.
pub async fn rule_push(
    job: &Job,
    parsed: &Parsed,
    buffered: &[u8],
    repo: &str,
) -> Result<Forward, String> {
    let head = &parsed.head;
    let mut allowed = Vec::new();
    let mut reasons = HashMap::new();
    for (i, u) in head.updates.iter().enumerate() {
        let forced = forced(job, parsed, u, repo).await;
        let context = push::context(u, forced);
        let text = push::text(u, forced);
        let Some((ruling, mut event)) = rule_on(job, "git:push", &context, &text).await else {
            return Err("the agent closed the channel during a decision".into());
        };
        event.context = push::record_context(u, forced);
        if let Some(note) = &parsed.pack_note {
            event.reason = Some(format!(
                "{}; pack not read whole: {note}",
                event.reason.unwrap_or_default()
            ));
        }
        if !ruling.allowed {
            reasons.insert(i, refusal("git:push", &ruling));
        }
        allowed.push(ruling.allowed);
        job.gw.record(event).await;
    }
    let (keep, refused) = push::refusals(head, &allowed, &reasons);
    if !refused.is_empty() && !head.reports() {
        // A client that asked for no report would take silence as success.
        return Err(format!(
            "git push refused ({}); the client asked for no report-status",
            refused
                .iter()
                .map(|(r, why)| format!("{r}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let (bytes, pack_needed) = head.forwarded(&keep, buffered);
    let none_kept = !keep.iter().any(|k| *k);
    Ok(Forward {
        bytes,
        pass_rest: pack_needed,
        answer: (none_kept && !head.updates.is_empty())
            .then(|| push::whole_report(&refused, head.sideband())),
        refused: if none_kept { Vec::new() } else { refused },
        sideband: head.sideband(),
    })
}

/// Whether `u` rewrites history, from the pack and then the server.
async fn forced(job: &Job, parsed: &Parsed, u: &Update, repo: &str) -> Forced {
    if u.created() || u.deleted() {
        return Forced::No;
    }
    let (Some(old), Some(new)) = (
        crate::protocols::git::pack::parse_hex(u.old.as_bytes()),
        crate::protocols::git::pack::parse_hex(u.new.as_bytes()),
    ) else {
        return Forced::Unknown;
    };
    let outside = match push::ancestry(&old, &new, parsed.commits.as_ref()) {
        Ok(f) => return f,
        Err(outside) => outside,
    };
    if outside.len() > MAX_ASKS {
        return Forced::Unknown;
    }
    let mut all_answered = true;
    for c in outside {
        match is_ancestor(job, repo, &old, &c).await {
            Some(true) => return Forced::No,
            Some(false) => {}
            None => all_answered = false,
        }
    }
    let complete = parsed.commits.as_ref().is_some_and(|c| !c.incomplete);
    if all_answered && complete {
        Forced::Yes
    } else {
        Forced::Unknown
    }
}

/// Asks the server whether `old` is an ancestor of `commit` in `repo`
/// (looked up as receive-pack does: `repo/.git`, `repo`, `repo.git/.git`,
/// `repo.git`). None: no answer (no such repository or commit).
///
/// The question is about the commits as stored, not as the repository
/// presents them: replace refs (`refs/replace/*`, which an agent may push
/// as any other ref), grafts (`info/grafts`) and a commit-graph file would
/// each let the repository claim parents the objects do not have, making
/// a rewrite look like a fast-forward. So git is told to read none of
/// them (`--no-replace-objects` and `GIT_NO_REPLACE_OBJECTS`,
/// `core.useReplaceRefs=false`, `GIT_GRAFT_FILE=/dev/null`,
/// `core.commitGraph=false`). A `shallow` file only removes parents: it can
/// make a fast-forward look forced, never the reverse.
async fn is_ancestor(job: &Job, repo: &str, old: &Oid, commit: &Oid) -> Option<bool> {
    if repo.is_empty() {
        return None;
    }
    let base = shell_path(repo)?;
    let script = format!(
        "for d in {base}'/.git' {base} {base}'.git/.git' {base}'.git'; do \
         if git --git-dir=\"$d\" rev-parse --git-dir >/dev/null 2>&1; then \
         GIT_NO_REPLACE_OBJECTS=1 GIT_GRAFT_FILE=/dev/null \
         git --no-replace-objects -c core.commitGraph=false -c core.useReplaceRefs=false \
         --git-dir=\"$d\" merge-base --is-ancestor {} {} 2>/dev/null; echo $?; exit 0; fi; \
         done; echo none",
        hex(old),
        hex(commit)
    );
    match job.host().ask(&script).await {
        Ok(a) if a == "0" => Some(true),
        Ok(a) if a == "1" => Some(false),
        Ok(a) => {
            tracing::info!(repo, answer = %a, "git: the server could not tell ancestry");
            None
        }
        Err(why) => {
            tracing::info!(repo, %why, "git: the server could not be asked about ancestry");
            None
        }
    }
}

/// `path` for a POSIX shell line: single-quoted, with `~/` made the
/// login's `$HOME` as receive-pack expands it. None for `~user` paths.
fn shell_path(path: &str) -> Option<String> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    if let Some(rest) = path.strip_prefix("~/") {
        return Some(format!("\"$HOME\"/{}", quote(rest)));
    }
    if path.starts_with('~') {
        return None;
    }
    Some(quote(path))
}

/// Records a push refused whole because blastgate would not read it.
pub async fn unparsed(job: &Job, why: &str) {
    let mut event = job.gw.event(EventKind::Command, Verdict::Deny);
    event.action = Some("git:push".into());
    event.text = Some("git push (unreadable)".into());
    event.reason = Some(format!("refused: {why}"));
    job.gw.record(event).await;
}

#[cfg(test)]
mod tests {
    use super::shell_path;

    #[test]
    fn repository_paths_are_quoted_for_the_shell() {
        assert_eq!(shell_path("/srv/a.git").as_deref(), Some("'/srv/a.git'"));
        assert_eq!(shell_path("x'$(id)").as_deref(), Some("'x'\\''$(id)'"));
        assert_eq!(shell_path("~/r").as_deref(), Some("\"$HOME\"/'r'"));
        assert_eq!(shell_path("~bob/r"), None);
    }
}
