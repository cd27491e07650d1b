//! The console's pages, rendered on the server. Every value an agent or a
//! token could have chosen (statements, names, claims) goes through
//! [`escape`]; the script builds rows with `textContent` only.

use serde_json::{json, Value};

use super::{may_decide, Approver};
use crate::approvals::ApprovalRequest;

pub const CSS: &str = include_str!("assets/console.css");
pub const SCRIPT: &str = include_str!("assets/console.js");

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The page frame: title, the signed-in approver, navigation.
pub fn frame(title: &str, approver: Option<(&Approver, &str)>, body: &str) -> String {
    let who = match approver {
        Some((a, csrf)) => format!(
            "<span class=\"who\">{} <small>({})</small></span>\
             <form method=\"post\" action=\"/logout\" class=\"inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>",
            escape(&a.name),
            escape(&a.groups.join(", ")),
            escape(csrf)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · blastgate</title>\
         <link rel=\"stylesheet\" href=\"/assets/console.css\"></head><body>\
         <header><strong>blastgate</strong> <nav><a href=\"/\">Approvals</a> \
         <a href=\"/sessions\">Sessions</a></nav> {who}</header>\
         <main><h1>{title}</h1>{body}</main></body></html>",
        title = escape(title)
    )
}

pub fn message(text: &str) -> String {
    frame(
        "blastgate",
        None,
        &format!(
            "<p class=\"message\">{}</p><p><a href=\"/\">Back</a></p>",
            escape(text)
        ),
    )
}

fn job_line(r: &ApprovalRequest) -> String {
    let ci = r.ci_job.as_ref().map(|j| j.describe());
    let token = token_line(r);
    match ci {
        Some(ci) => format!("{ci}; {token}"),
        None => token,
    }
}

fn token_line(r: &ApprovalRequest) -> String {
    match &r.job {
        Some(job) => {
            let claim = |k: &str| job.claims.get(k).cloned().unwrap_or_default();
            format!(
                "{} {} · {} · {}",
                claim("repository"),
                claim("ref"),
                claim("workflow"),
                claim("actor")
            )
        }
        None => "no job token".into(),
    }
}

/// One request as the page's script and the API show it.
pub fn approvals_json(approver: &Approver, list: &[ApprovalRequest]) -> Value {
    Value::Array(
        list.iter()
            .map(|r| {
                json!({
                    "id": r.id.to_string(),
                    "agent": r.agent,
                    "pid": r.pid,
                    "job": job_line(r),
                    "target": r.target,
                    "action": r.action,
                    "text": r.text,
                    "policy": r.policy_id.clone().unwrap_or_default(),
                    "reason": r.reason,
                    "group": r.group,
                    "can_decide": may_decide(approver, r),
                })
            })
            .collect(),
    )
}

fn row(approver: &Approver, csrf: &str, r: &ApprovalRequest, focus: Option<&str>) -> String {
    let id = r.id.to_string();
    let decide = if may_decide(approver, r) {
        format!(
            "<form method=\"post\" action=\"/approvals/{id}\" class=\"decide\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <textarea name=\"reason\" required maxlength=\"2000\" placeholder=\"Reason (required)\"></textarea>\
             <button type=\"submit\" name=\"decision\" value=\"approve\" class=\"approve\">Approve</button>\
             <button type=\"submit\" name=\"decision\" value=\"deny\" class=\"deny\">Deny</button></form>",
            csrf = escape(csrf)
        )
    } else {
        format!(
            "<span class=\"cannot\">only group {} decides</span>",
            escape(&r.group)
        )
    };
    let class = if focus == Some(id.as_str()) {
        " class=\"focus\""
    } else {
        ""
    };
    format!(
        "<tr data-id=\"{id}\"{class}><td>{agent}<br><small>pid {pid}</small></td><td>{job}</td>\
         <td>{target}</td><td>{action}</td><td><pre>{text}</pre></td>\
         <td>{policy}<br><small>{reason}</small></td><td>{group}</td><td>{decide}</td></tr>",
        agent = escape(&r.agent),
        pid = r.pid,
        job = escape(&job_line(r)),
        target = escape(&r.target),
        action = escape(&r.action),
        text = escape(&r.text),
        policy = escape(r.policy_id.as_deref().unwrap_or("")),
        reason = escape(&r.reason),
        group = escape(&r.group),
    )
}

pub fn approvals(
    approver: &Approver,
    csrf: &str,
    list: &[ApprovalRequest],
    focus: Option<&str>,
) -> String {
    let rows: String = list.iter().map(|r| row(approver, csrf, r, focus)).collect();
    let empty = if list.is_empty() {
        "<p id=\"none\">Nothing is waiting.</p>"
    } else {
        "<p id=\"none\" hidden>Nothing is waiting.</p>"
    };
    let body = format!(
        "<meta name=\"csrf\" content=\"{csrf}\">{empty}\
         <table id=\"approvals\"><thead><tr><th>Agent</th><th>Job</th><th>Target</th>\
         <th>Action</th><th>Statement, command or request</th><th>Policy and reason</th>\
         <th>Group</th><th>Decision</th></tr></thead><tbody>{rows}</tbody></table>\
         <script src=\"/assets/console.js\"></script>",
        csrf = escape(csrf)
    );
    frame("Pending approvals", Some((approver, csrf)), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_text_cannot_become_markup() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        let approver = Approver {
            iss: "i".into(),
            sub: "s".into(),
            name: "<b>alice</b>".into(),
            groups: vec!["dba".into()],
        };
        let r = ApprovalRequest {
            id: uuid::Uuid::now_v7(),
            created: std::time::SystemTime::now(),
            session_id: uuid::Uuid::nil(),
            agent: "a".into(),
            pid: 1,
            target: "t".into(),
            action: "sql:delete".into(),
            text: "DELETE FROM t WHERE x = '</pre><script>1</script>'".into(),
            policy_id: None,
            group: "dba".into(),
            reason: "r".into(),
            job: None,
            // A job's fields are the job's own say: escaped too.
            ci_job: Some(crate::jobs::CiJob {
                provider: "github".into(),
                fields: [("repository", "acme/<i>app"), ("run_id", "42")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
        };
        let page = approvals(&approver, "tok\"en", &[r], None);
        assert!(!page.contains("<i>app"), "{page}");
        assert!(
            page.contains("acme/&lt;i&gt;app"),
            "the approver sees the job: {page}"
        );
        assert!(!page.contains("<script>1"), "{page}");
        assert!(!page.contains("<b>alice"), "{page}");
        assert!(page.contains("tok&quot;en"));
        assert!(page.contains("name=\"decision\" value=\"approve\""));
    }
}
