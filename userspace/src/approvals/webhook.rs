//! Approval notifications: a JSON POST per request opened and decided, to
//! every configured URL. The payload has Slack's incoming-webhook `text`
//! field plus a `blastgate` object with the details.
//!
//! Delivery runs in its own task behind a bounded queue, with retries and
//! backoff; a full queue or a dead endpoint is logged, never waited on, so
//! notifications cannot slow the data path.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Request};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::json;
use tokio::sync::mpsc;

use super::{ApprovalRequest, Outcome};

const QUEUE: usize = 1024;
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Message(pub(super) serde_json::Value);

impl Message {
    /// With `console` (its public URL), the message links to the request
    /// there: approve and deny after signing in.
    pub fn requested(r: &ApprovalRequest, timeout: Duration, console: Option<&str>) -> Message {
        let decide = match console {
            // Links only open the request in the console (after sign-in):
            // a GET never decides, the approver confirms with a reason.
            Some(url) => format!(
                "<{url}/approvals/{id}?decide=approve|Approve> · <{url}/approvals/{id}?decide=deny|Deny> in the console (or `blastgate approvals approve|deny {id}`)",
                id = r.id
            ),
            None => format!(
                "Approve: `blastgate approvals approve {id}` · deny: `blastgate approvals deny {id}`",
                id = r.id
            ),
        };
        let link = console.map(|url| format!("{url}/approvals/{}", r.id));
        let links = console.map(|url| {
            json!({
                "approve": format!("{url}/approvals/{}?decide=approve", r.id),
                "deny": format!("{url}/approvals/{}?decide=deny", r.id),
            })
        });
        Message(json!({
            "text": format!(
                ":warning: blastgate: agent *{}* wants `{}` on *{}* — held by policy `{}` for approval by *{}* ({}). {decide} · auto-deny in {:?}.",
                r.agent, r.action, r.target, r.policy_id.as_deref().unwrap_or("-"), r.group, r.reason, timeout
            ),
            "blastgate": {"event": "approval_requested", "request": r, "console_url": link,
                          "console_links": links},
        }))
    }

    pub fn decided(
        r: &ApprovalRequest,
        o: &Outcome,
        latency: Duration,
        timeout: Duration,
    ) -> Message {
        Message(json!({
            "text": format!(
                "blastgate: `{}` by *{}* on *{}* ({}): {} after {:.1}s",
                r.action, r.agent, r.target, r.id, o.describe(timeout), latency.as_secs_f64()
            ),
            "blastgate": {"event": "approval_decided", "request": r, "decision": o,
                          "latency_ms": latency.as_millis() as u64},
        }))
    }
}

#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Message>,
    /// The web console's public URL, for links in messages.
    pub console: Option<String>,
}

impl Notifier {
    /// Starts the delivery task; `None` when there is nothing to notify.
    pub fn start(urls: Vec<String>, console: Option<String>) -> Option<Notifier> {
        if urls.is_empty() {
            return None;
        }
        let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
        tokio::spawn(async move {
            while let Some(Message(body)) = rx.recv().await {
                let body = Bytes::from(body.to_string());
                for url in &urls {
                    let client = client.clone();
                    let url = url.clone();
                    let body = body.clone();
                    tokio::spawn(async move { deliver(&client, &url, body).await });
                }
            }
        });
        Some(Notifier { tx, console })
    }

    pub fn notify(&self, m: Message) {
        if self.tx.try_send(m).is_err() {
            tracing::error!(
                "approval webhook queue full; notification dropped (the event is in the spool)"
            );
        }
    }
}

async fn deliver<C>(client: &Client<C, Full<Bytes>>, url: &str, body: Bytes)
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let req = match Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(url, error = %e, "bad webhook URL");
                return;
            }
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, client.request(req)).await;
        match result {
            Ok(Ok(resp)) if resp.status().is_success() => {
                // Drain so the connection can be reused.
                let _ = resp.into_body().collect().await;
                return;
            }
            Ok(Ok(resp)) => {
                tracing::warn!(url, status = %resp.status(), attempt, "webhook refused the notification")
            }
            Ok(Err(e)) => tracing::warn!(url, error = %e, attempt, "webhook delivery failed"),
            Err(_) => tracing::warn!(url, attempt, "webhook delivery timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
    tracing::error!(
        url,
        "webhook notification given up after {ATTEMPTS} attempts"
    );
}
