//! `blastgate egress suggest`: an allow-list from the records of a run,
//! typically one in audit mode. It names every `name:port` an agent
//! connected to, or tried to, outside the gateway targets: what enforce
//! mode refused (`session_denied` with a name) or would have refused (the
//! audit records of egress connections). Applied, it lets the same run
//! pass in enforce mode.

use std::collections::BTreeSet;

use crate::{
    proxy::driver::EGRESS,
    records::{Event, EventKind},
};

/// The action egress passthrough records what audit mode let through.
pub const AUDITED: &str = "egress:connect";

/// `name:port` entries, sorted, from `events` (of agent `agent` only, if
/// given).
pub fn suggest<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    agent: Option<&str>,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    for e in events {
        if agent.is_some_and(|a| e.caller.as_ref().is_none_or(|c| c.agent != a)) {
            continue;
        }
        let (Some(name), Some(dst)) = (&e.dst_name, e.orig_dst) else {
            continue;
        };
        let wanted = match e.kind {
            EventKind::SessionDenied => e.target.is_none(),
            EventKind::Request => e.shadow && e.action.as_deref() == Some(AUDITED),
            EventKind::SessionOpened => e.target.as_deref() == Some(EGRESS) && e.shadow,
            _ => false,
        };
        if wanted {
            out.insert(format!("{name}:{}", dst.port()));
        }
    }
    out.into_iter().collect()
}

/// The list as the `[egress]` section to paste into the config.
pub fn as_toml(entries: &[String]) -> String {
    let mut s = String::from("[egress]\nallow = [\n");
    for e in entries {
        s.push_str(&format!("    \"{e}\",\n"));
    }
    s.push_str("]\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Verdict;

    fn event(kind: EventKind, name: &str, dst: &str) -> Event {
        let mut e = Event::daemon(kind, Verdict::Deny, "x");
        e.dst_name = Some(name.into());
        e.orig_dst = Some(dst.parse().unwrap());
        e
    }

    #[test]
    fn refusals_and_audited_connections_become_entries() {
        let denied = event(EventKind::SessionDenied, "api.test", "10.0.0.1:443");
        let mut audited = event(EventKind::Request, "cdn.test", "10.0.0.2:443");
        audited.shadow = true;
        audited.action = Some(AUDITED.into());
        let mut target = event(EventKind::SessionDenied, "db.test", "10.0.0.3:5432");
        target.target = Some("orders".into());
        let mut allowed = event(EventKind::Request, "ok.test", "10.0.0.4:443");
        allowed.action = Some(AUDITED.into());
        let lookup = event(EventKind::DnsQuery, "only.looked.up", "10.0.0.5:53");
        let got = suggest(
            [&denied, &audited, &target, &allowed, &lookup, &denied],
            None,
        );
        assert_eq!(got, vec!["api.test:443", "cdn.test:443"]);
        assert!(as_toml(&got).contains("    \"api.test:443\",\n"));
    }
}
