//! Kubernetes requests as the API server authorizes them (its
//! RequestInfoFactory rules), so policy can speak of `k8s:delete` of
//! `namespaces` rather than of paths.

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct K8sRequest {
    /// get list watch create update patch delete deletecollection; for
    /// non-resource URLs the lowercase method.
    pub verb: String,
    /// "" for the core group (`/api/v1`).
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    /// exec, attach, portforward, log, scale, status, proxy, eviction…
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
    pub resource_request: bool,
}

/// `path` without its query; `query` raw ("" if none).
pub fn classify(method: &str, path: &str, query: &str) -> K8sRequest {
    let method_verb = method.to_ascii_lowercase();
    let mut req = K8sRequest {
        verb: method_verb.clone(),
        path: path.to_string(),
        ..Default::default()
    };
    let parts: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .map(decode)
        .collect();
    let mut rest: &[String] = &parts;
    // /api/v1/… (core) or /apis/GROUP/VERSION/…; anything shorter is
    // discovery or a non-resource URL.
    match rest.first().map(String::as_str) {
        Some("api") if rest.len() >= 3 => {
            req.api_version = rest[1].clone();
            rest = &rest[2..];
        }
        Some("apis") if rest.len() >= 4 => {
            req.api_group = rest[1].clone();
            req.api_version = rest[2].clone();
            rest = &rest[3..];
        }
        _ => return req,
    }
    req.resource_request = true;
    req.verb = match method {
        "POST" => "create",
        "GET" | "HEAD" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "",
    }
    .to_string();
    if req.verb.is_empty() {
        req.verb = method_verb;
    }
    // The legacy /watch/ prefix.
    if rest.first().map(String::as_str) == Some("watch") {
        req.verb = "watch".into();
        rest = &rest[1..];
    }
    // namespaces/NS/RESOURCE/… , but `namespaces/NS` alone is the
    // namespace object itself.
    if rest.first().map(String::as_str) == Some("namespaces") {
        if let Some(ns) = rest.get(1) {
            req.namespace = ns.clone();
            if rest.len() > 2 {
                rest = &rest[2..];
            }
        }
    }
    if let Some(r) = rest.first() {
        req.resource = r.clone();
    }
    if let Some(n) = rest.get(1) {
        req.name = n.clone();
    }
    if let Some(s) = rest.get(2) {
        req.subresource = s.clone();
    }
    let has_param = |k: &str| {
        query.split('&').any(|kv| {
            let (key, v) = kv.split_once('=').unwrap_or((kv, ""));
            key == k && (v == "true" || v == "1")
        })
    };
    if req.name.is_empty() {
        match req.verb.as_str() {
            "get" if has_param("watch") => req.verb = "watch".into(),
            "get" => req.verb = "list".into(),
            "delete" => req.verb = "deletecollection".into(),
            _ => {}
        }
    } else if req.verb == "watch" {
        // /watch/…/NAME: a watch of one object.
    } else if req.verb == "get" && has_param("watch") {
        req.verb = "watch".into();
    }
    req
}

/// Whether the response streams (watch, `log?follow=true`): passed through
/// as it arrives, never buffered.
pub fn streams(req: &K8sRequest, query: &str) -> bool {
    let follow = query
        .split('&')
        .any(|kv| kv == "follow=true" || kv == "follow=1");
    req.verb == "watch" || (req.subresource == "log" && follow)
}

/// The replica count a write sets: `spec.replicas` in a JSON body or merge
/// patch, or a JSON Patch operation on `/spec/replicas`.
pub fn replicas_set(_req: &K8sRequest, content_type: &str, body: &[u8]) -> Option<i64> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    if content_type.starts_with("application/json-patch+json") {
        return doc.as_array()?.iter().find_map(|op| {
            let path = op.get("path")?.as_str()?;
            let kind = op.get("op")?.as_str()?;
            (path == "/spec/replicas" && (kind == "replace" || kind == "add"))
                .then(|| op.get("value")?.as_i64())
                .flatten()
        });
    }
    doc.get("spec")?.get("replicas")?.as_i64()
}

fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(m: &str, p: &str, q: &str) -> (String, String, String, String, String) {
        let r = classify(m, p, q);
        (r.verb, r.resource, r.namespace, r.name, r.subresource)
    }

    fn t(v: &str, r: &str, ns: &str, n: &str, s: &str) -> (String, String, String, String, String) {
        (v.into(), r.into(), ns.into(), n.into(), s.into())
    }

    #[test]
    fn resource_requests_map_like_the_api_server() {
        assert_eq!(
            c("GET", "/api/v1/namespaces/prod/pods", ""),
            t("list", "pods", "prod", "", "")
        );
        assert_eq!(
            c("GET", "/api/v1/namespaces/prod/pods", "watch=true"),
            t("watch", "pods", "prod", "", "")
        );
        assert_eq!(
            c("GET", "/api/v1/watch/namespaces/prod/pods", ""),
            t("watch", "pods", "prod", "", "")
        );
        assert_eq!(
            c("GET", "/api/v1/namespaces/prod/pods/web-1", ""),
            t("get", "pods", "prod", "web-1", "")
        );
        assert_eq!(
            c("DELETE", "/api/v1/namespaces/prod/pods", ""),
            t("deletecollection", "pods", "prod", "", "")
        );
        assert_eq!(
            c("DELETE", "/api/v1/namespaces/dev", ""),
            t("delete", "namespaces", "dev", "dev", "")
        );
        assert_eq!(
            c("GET", "/api/v1/namespaces", ""),
            t("list", "namespaces", "", "", "")
        );
        assert_eq!(
            c(
                "PATCH",
                "/apis/apps/v1/namespaces/prod/deployments/web/scale",
                ""
            ),
            t("patch", "deployments", "prod", "web", "scale")
        );
        assert_eq!(
            c(
                "POST",
                "/api/v1/namespaces/prod/pods/web-1/exec",
                "command=ls"
            ),
            t("create", "pods", "prod", "web-1", "exec")
        );
        assert_eq!(
            c(
                "GET",
                "/api/v1/namespaces/prod/pods/web-1/log",
                "follow=true"
            ),
            t("get", "pods", "prod", "web-1", "log")
        );
        assert_eq!(
            c(
                "DELETE",
                "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
                ""
            ),
            t("delete", "clusterroles", "", "admin", "")
        );
        let r = classify("GET", "/apis/apps/v1/namespaces/prod/deployments", "");
        assert_eq!(
            (r.api_group.as_str(), r.api_version.as_str()),
            ("apps", "v1")
        );
    }

    #[test]
    fn discovery_and_other_urls_are_not_resource_requests() {
        for p in [
            "/api",
            "/apis",
            "/version",
            "/apis/apps/v1",
            "/openapi/v3",
            "/healthz",
            "/",
        ] {
            let r = classify("GET", p, "");
            assert!(!r.resource_request, "{p}");
            assert_eq!(r.verb, "get");
        }
    }

    #[test]
    fn streams_and_replicas() {
        let log = classify("GET", "/api/v1/namespaces/p/pods/w/log", "follow=true");
        assert!(streams(&log, "follow=true"));
        assert!(!streams(&log, ""));
        let scale = classify(
            "PATCH",
            "/apis/apps/v1/namespaces/p/deployments/w/scale",
            "",
        );
        assert_eq!(
            replicas_set(
                &scale,
                "application/merge-patch+json",
                br#"{"spec":{"replicas":0}}"#
            ),
            Some(0)
        );
        assert_eq!(
            replicas_set(
                &scale,
                "application/json-patch+json",
                br#"[{"op":"replace","path":"/spec/replicas","value":3}]"#
            ),
            Some(3)
        );
        assert_eq!(replicas_set(&scale, "application/json", b"not json"), None);
    }

    #[test]
    fn odd_paths_never_panic() {
        for p in [
            "//",
            "/api/",
            "/apis/x",
            "/api/v1/namespaces",
            "/api/v1/namespaces/",
            "%zz/%4",
            "/api/v1/%2F%",
        ] {
            for m in ["GET", "DELETE", "BREW", ""] {
                let _ = classify(m, p, "watch&follow=true=1");
            }
        }
        assert_eq!(
            classify("GET", "/api/v1/namespaces/a%20b/pods", "").namespace,
            "a b"
        );
    }
}
