//! How a refused request is answered: JSON naming the policy and reason,
//! or, for Kubernetes targets, the API server's own `Status` shape.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;

use super::{
    request::Conn,
    settings::{ApiKind, HttpTarget},
    upstream::Body,
};

impl Conn {
    /// A refusal the agent (and whoever reads its transcript) can act on:
    /// JSON naming the policy and reason; for Kubernetes targets a
    /// `Status`, which kubectl and client libraries print as the server's
    /// own error ("Error from server (Forbidden): …").
    pub(super) fn refusal(
        &self,
        status: StatusCode,
        reason: &str,
        policy: Option<&str>,
        approval: Option<uuid::Uuid>,
    ) -> Response<Body> {
        answer(&self.cfg, status, reason, policy, approval)
    }
}

/// The refusal for a target, also where no request state exists yet (a
/// session refused as a whole).
pub fn answer(
    cfg: &HttpTarget,
    status: StatusCode,
    reason: &str,
    policy: Option<&str>,
    approval: Option<uuid::Uuid>,
) -> Response<Body> {
    let approval = approval.map(|a| a.to_string());
    if cfg.kind == ApiKind::Aws {
        // The AWS CLI and SDKs print an AWS error body as the server's own.
        let mut message = reason.to_string();
        if let Some(p) = policy {
            message += &format!(" (policy {p})");
        }
        if let Some(a) = &approval {
            message += &format!(" (approval {a})");
        }
        return super::aws::error(status, "AccessDenied", &message, false);
    }
    let body = match cfg.kind {
        ApiKind::Generic => json!({
            "error": format!("blastgate: {}", status.canonical_reason().unwrap_or("refused")),
            "policy": policy,
            "reason": reason,
            "approval_id": approval,
        }),
        ApiKind::Kubernetes | ApiKind::Aws => {
            let mut message = format!("blastgate: {reason}");
            if let Some(p) = policy {
                message += &format!(" (policy {p})");
            }
            if let Some(a) = &approval {
                message += &format!(" (approval {a})");
            }
            json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": k8s_reason(status),
                "code": status.as_u16(),
                "policy": policy,
                "approval_id": approval,
            })
        }
    };
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The `Status.reason` the API server gives with these codes.
fn k8s_reason(status: StatusCode) -> &'static str {
    match status {
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
        StatusCode::MISDIRECTED_REQUEST | StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        _ => "InternalError",
    }
}
