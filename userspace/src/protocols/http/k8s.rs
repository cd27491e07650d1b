//! Kubernetes requests as the API server's authorizer sees them, so that
//! policy can say "k8s:delete of namespaces is denied".
//!
//! The reading follows the apiserver's `RequestInfoFactory`
//! (k8s.io/apiserver/pkg/endpoints/request/requestinfo.go) rule for rule,
//! quirks included: wherever this module and the apiserver read a request
//! differently, an agent can ask for one thing, have policy judge another,
//! and be granted the first. So nothing here is tidied up on the way; in
//! particular an empty segment (`//`) inside a path stays a segment, as it
//! does in the apiserver.

use serde_json::Value;

use super::k8s_body::{self, Kind};

/// A request as the apiserver's authorizer is asked about it (its
/// `RequestInfo`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct K8sRequest {
    /// get list watch create update patch delete deletecollection (or the
    /// special verb `proxy`), or for non-resource URLs the lowercase HTTP
    /// method ("get", "post", …). Empty for a resource request whose method
    /// the apiserver has no verb for (OPTIONS, CONNECT, …), as there.
    pub verb: String,
    /// "" for the core group (/api/v1).
    pub api_group: String,
    /// "v1", "v1beta1".
    pub api_version: String,
    /// "pods", "deployments", "namespaces"; "" for non-resource URLs.
    pub resource: String,
    /// "exec", "attach", "portforward", "log", "scale", "status", "proxy",
    /// "eviction", …; "" if none.
    pub subresource: String,
    /// "" when cluster-scoped or all namespaces.
    pub namespace: String,
    /// "" for collections.
    pub name: String,
    /// The percent-decoded request path ("/version", "/openapi/v3", "/apis",
    /// "/healthz"), which is what the apiserver matches non-resource rules
    /// against.
    pub path: String,
    pub resource_request: bool,
}

/// Namespace subresources, which the apiserver must tell apart from a
/// resource inside the namespace (`/namespaces/prod/status` vs
/// `/namespaces/prod/pods`).
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Workloads whose own object carries `spec.replicas`.
const SCALABLE: &[&str] = &[
    "deployments",
    "statefulsets",
    "replicasets",
    "replicationcontrollers",
];

const REPLICAS: [&str; 2] = ["spec", "replicas"];

/// `path` without the query; `query` is the raw query string ("" if none).
///
/// Never fails: a request the apiserver cannot read either (a malformed
/// escape, `/api/v1/watch` with nothing after it) comes back as far as it
/// could be read, and the apiserver refuses it.
pub fn classify(method: &str, path: &str, query: &str) -> K8sRequest {
    // The apiserver works on Go's decoded `URL.Path`, so `%2F` splits
    // segments there and must here too.
    let decoded = unescape(path, false).unwrap_or_else(|| path.to_owned());
    let mut req = K8sRequest {
        verb: method.to_lowercase(),
        api_group: String::new(),
        api_version: String::new(),
        resource: String::new(),
        subresource: String::new(),
        namespace: String::new(),
        name: String::new(),
        path: String::new(),
        resource_request: false,
    };
    resolve(&mut req, method, &decoded, query);
    req.path = decoded;
    req
}

fn resolve(req: &mut K8sRequest, method: &str, path: &str, query: &str) {
    let trimmed = path.trim_matches('/');
    let segments: Vec<&str> = match trimmed {
        "" => Vec::new(),
        _ => trimmed.split('/').collect(),
    };
    // Discovery (`/api/v1`, `/apis/apps/v1`) and everything outside the two
    // API prefixes are non-resource URLs.
    let mut parts = match segments.as_slice() {
        ["api", version, rest @ ..] if !rest.is_empty() => {
            req.api_version = (*version).to_owned();
            rest
        }
        ["apis", group, version, rest @ ..] if !rest.is_empty() => {
            req.api_group = (*group).to_owned();
            req.api_version = (*version).to_owned();
            rest
        }
        _ => return,
    };
    req.resource_request = true;

    match parts {
        [special @ ("watch" | "proxy"), rest @ ..] => {
            if rest.is_empty() {
                // The apiserver answers this with an error before any
                // authorization, so the partial reading is all there is.
                return;
            }
            req.verb = (*special).to_owned();
            parts = rest;
        }
        _ => req.verb = http_verb(method).to_owned(),
    }

    if let ["namespaces", namespace, rest @ ..] = parts {
        req.namespace = (*namespace).to_owned();
        if let [next, ..] = rest {
            if !NAMESPACE_SUBRESOURCES.contains(next) {
                parts = rest;
            }
        }
    }

    // The legacy proxy verb passes everything after the name to the backend,
    // so none of it is a subresource.
    let subresources = req.verb != "proxy";
    match parts {
        [resource, name, subresource, ..] if subresources => {
            req.resource = (*resource).to_owned();
            req.name = (*name).to_owned();
            req.subresource = (*subresource).to_owned();
        }
        [resource, name, ..] => {
            req.resource = (*resource).to_owned();
            req.name = (*name).to_owned();
        }
        [resource] => req.resource = (*resource).to_owned(),
        [] => {}
    }

    if req.name.is_empty() && req.verb == "get" {
        let watch = query_value(query, "watch").is_some_and(|v| go_bool(&v));
        req.verb = if watch { "watch" } else { "list" }.to_owned();
        // A list narrowed to one name is authorized as a request for that
        // object (RBAC resourceNames), so policy sees the name too.
        if let Some(name) = query_value(query, "fieldSelector").and_then(|s| selected_name(&s)) {
            req.name = name;
        }
    }
    if req.name.is_empty() && req.verb == "delete" {
        req.verb = "deletecollection".to_owned();
    }
}

/// Go compares methods case-sensitively, so `get` is not `GET` here either.
fn http_verb(method: &str) -> &'static str {
    match method {
        "POST" => "create",
        "GET" | "HEAD" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "",
    }
}

/// The replica count a request body sets, if it sets one: a PUT/PATCH of the
/// `scale` subresource, or of a deployment/statefulset/replicaset/
/// replicationcontroller. The body is decoded as the apiserver decodes it
/// ([`k8s_body::decode`]: JSON, YAML for apply patches and `application/yaml`
/// objects); None when the body does not set a count or cannot be read, which
/// the caller tells apart through [`k8s_body`] itself.
pub fn replicas_set(req: &K8sRequest, content_type: &str, body: &[u8]) -> Option<i64> {
    match k8s_body::decode(&req.verb, Some(content_type.as_bytes()), body)? {
        k8s_body::Body::Read { kind, doc, .. } => replicas_in(req, kind, &doc),
        k8s_body::Body::Unreadable(_) => None,
    }
}

/// Whether a write to this request can change a replica count.
pub fn scalable(req: &K8sRequest) -> bool {
    let scale = req.subresource == "scale";
    let workload = req.subresource.is_empty() && SCALABLE.contains(&req.resource.as_str());
    req.resource_request && matches!(req.verb.as_str(), "update" | "patch") && (scale || workload)
}

/// The count a decoded body of this kind sets.
///
/// The count is the one the apiserver would store, which is not always a
/// number in the body: a count the request removes or leaves out of a whole
/// object becomes 0 for a Scale (a plain integer) and 1 for a workload (a
/// pointer defaulted to 1). A JSON Patch that copies or moves some other
/// stored value into it cannot be known from here and is reported as 0, the
/// worst case for a guard against scaling down.
pub fn replicas_in(req: &K8sRequest, kind: Kind, doc: &Value) -> Option<i64> {
    if !scalable(req) {
        return None;
    }
    let absent = if req.subresource == "scale" { 0 } else { 1 };
    match kind {
        // An update replaces the whole object.
        Kind::Object => merged(doc, &REPLICAS, true, false, absent),
        Kind::JsonPatch => json_patch(doc, absent),
        Kind::Strategic => merged(doc, &REPLICAS, false, true, absent),
        Kind::Merge | Kind::Apply => merged(doc, &REPLICAS, false, false, absent),
    }
}

/// What a merge patch (or a replacing value, with `replaced`) leaves at
/// `path`. Strategic merge patches can also clear a map with `$patch:
/// replace`/`delete` or `$retainKeys`, which removes a count the patch does
/// not name.
fn merged(
    node: &Value,
    path: &[&str],
    replaced: bool,
    strategic: bool,
    absent: i64,
) -> Option<i64> {
    let Some((key, rest)) = path.split_first() else {
        return match node {
            Value::Null => Some(absent),
            leaf => count(leaf),
        };
    };
    let map = match node {
        Value::Null => return Some(absent),
        Value::Object(map) => map,
        _ => return None,
    };
    let directive = |name: &str| map.get(name).filter(|_| strategic);
    let patch = directive("$patch").and_then(Value::as_str);
    if patch == Some("delete") {
        return Some(absent);
    }
    let retained = directive("$retainKeys")
        .and_then(Value::as_array)
        .is_none_or(|keys| keys.iter().any(|k| k == key));
    let replaced = replaced || patch == Some("replace") || !retained;
    match map.get(*key) {
        Some(child) => merged(child, rest, replaced, strategic, absent),
        None if replaced => Some(absent),
        None => None,
    }
}

/// Replays a JSON Patch's operations on `spec.replicas`; the last one that
/// touches it wins.
fn json_patch(doc: &Value, absent: i64) -> Option<i64> {
    let mut set = None;
    for op in doc.as_array()? {
        // A malformed operation fails the whole patch in the apiserver.
        let path = pointer(op.get("path")?.as_str()?)?;
        let from = match op.get("from").and_then(Value::as_str) {
            Some(from) => Some(pointer(from)?),
            None => None,
        };
        let effect = match op.get("op")?.as_str()? {
            "add" | "replace" if holds(&path) => {
                let below = REPLICAS.get(path.len()..).unwrap_or_default();
                merged(op.get("value")?, below, true, false, absent)
            }
            "remove" if holds(&path) => Some(absent),
            "move" | "copy" if holds(&path) => Some(0),
            "move" if from.as_deref().is_some_and(holds) => Some(absent),
            "add" | "replace" | "remove" | "move" | "copy" | "test" => None,
            _ => return None,
        };
        set = effect.or(set);
    }
    set
}

/// Whether a write at this pointer reaches `spec.replicas`: the count itself,
/// `spec`, or the whole document.
fn holds(p: &[String]) -> bool {
    p.len() <= REPLICAS.len() && p.iter().zip(REPLICAS).all(|(a, b)| a == b)
}

/// An RFC 6901 JSON pointer, split and unescaped.
pub(super) fn pointer(p: &str) -> Option<Vec<String>> {
    if p.is_empty() {
        return Some(Vec::new());
    }
    let rest = p.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

/// An integer, or a float with nothing after the point: a strategic merge
/// patch passes through float64 in the apiserver, so `0.0` arrives as 0.
fn count(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
}

/// Whether this verb on this resource streams its response (watch, `log`
/// with follow=true), so the proxy must pass it through as it arrives and
/// never buffer it.
pub fn streams(req: &K8sRequest, query: &str) -> bool {
    req.resource_request
        && (req.verb == "watch"
            || (req.verb == "get"
                && req.subresource == "log"
                && query_value(query, "follow").is_some_and(|v| go_bool(&v))))
}

/// Whether it is an upgrade/streaming-protocol subresource (exec, attach,
/// portforward, proxy), or the legacy `proxy` verb: these carry another
/// protocol whose content the gateway cannot see into.
pub fn is_tunnel(req: &K8sRequest) -> bool {
    req.resource_request
        && (req.verb == "proxy"
            || matches!(
                req.subresource.as_str(),
                "exec" | "attach" | "portforward" | "proxy"
            ))
}

/// A query flag read as the apiserver reads one (`Convert_Slice_string_To_bool`):
/// anything present but "0" or "false" is true, even an empty value. Go's
/// `EqualFold` folds `ſ` to `s`, so "falſe" is false there and must be here.
fn go_bool(v: &str) -> bool {
    let is_false = v == "0"
        || (v.chars().count() == 5
            && v.chars()
                .zip("false".chars())
                .all(|(c, f)| c.to_ascii_lowercase() == f || (c == 'ſ' && f == 's')));
    !is_false
}

/// The first value of `key`, read as Go's `url.ParseQuery` reads it: pairs
/// with `;` or a malformed escape are skipped, not fatal.
fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.contains(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = unescape(v, true)?;
            (unescape(k, true)? == key).then_some(v)
        })
}

/// Go's URL unescaping. None for a malformed escape, which Go refuses; bytes
/// that are not UTF-8 are replaced, which can only make a name match less.
fn unescape(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = hex(*bytes.get(i + 1)?)?;
                let lo = hex(*bytes.get(i + 2)?)?;
                out.push((hi << 4) | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// The name a `metadata.name` field selector pins a list to, parsed as
/// apimachinery's `fields.ParseSelector` does. Any error there drops the name
/// in the apiserver, so any error here does too.
fn selected_name(selector: &str) -> Option<String> {
    let mut terms = split_unescaped(selector);
    // The apiserver sorts the terms and takes the first exact match.
    terms.sort_unstable();
    let mut name = None;
    for term in terms.into_iter().filter(|t| !t.is_empty()) {
        let (field, op, value) = split_term(term)?;
        let value = unescape_selector(value)?;
        if name.is_none() && field == "metadata.name" && op != "!=" {
            name = Some(value);
        }
    }
    // `path.IsValidPathSegmentName`: the apiserver ignores names that could
    // not appear in a URL path.
    name.filter(|n: &String| n != "." && n != ".." && !n.contains(['/', '%']))
}

/// A term split at its leftmost operator, trying `!=`, `==`, `=` at each
/// position, as Go's `splitTerm` does.
fn split_term(term: &str) -> Option<(&str, &str, &str)> {
    term.char_indices().find_map(|(i, _)| {
        let rest = term.get(i..)?;
        let op = ["!=", "==", "="]
            .into_iter()
            .find(|op| rest.starts_with(op))?;
        Some((term.get(..i)?, op, rest.get(op.len()..)?))
    })
}

/// Splits a field selector on commas not escaped with `\`.
fn split_unescaped(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ',' => {
                terms.extend(s.get(start..i));
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.extend(s.get(start..));
    terms
}

/// `fields.UnescapeValue`: only `\\`, `\,` and `\=` are escapes, and a bare
/// `,` or `=` is an error.
fn unescape_selector(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        match (escaped, c) {
            (true, '\\' | ',' | '=') => {
                out.push(c);
                escaped = false;
            }
            (true, _) | (false, ',' | '=') => return None,
            (false, '\\') => escaped = true,
            (false, _) => out.push(c),
        }
    }
    (!escaped).then_some(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A resource request in one line, kubectl style: `verb
    /// resource[.group][/subresource] [ns=…] [name=…]`.
    fn k(method: &str, target: &str) -> String {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let r = classify(method, path, query);
        assert!(r.resource_request, "{method} {target}");
        let mut line = format!("{} {}", r.verb, r.resource);
        for (sep, part) in [(".", &r.api_group), ("/", &r.subresource)] {
            if !part.is_empty() {
                line += &format!("{sep}{part}");
            }
        }
        for (label, part) in [("ns", &r.namespace), ("name", &r.name)] {
            if !part.is_empty() {
                line += &format!(" {label}={part}");
            }
        }
        line
    }

    fn req(method: &str, path: &str) -> K8sRequest {
        classify(method, path, "")
    }

    #[test]
    fn list_and_get_in_a_namespace() {
        assert_eq!(
            k("GET", "/api/v1/namespaces/prod/pods"),
            "list pods ns=prod"
        );
        assert_eq!(
            k("HEAD", "/api/v1/namespaces/prod/pods"),
            "list pods ns=prod"
        );
        let one = "/api/v1/namespaces/prod/pods/web-1";
        assert_eq!(k("GET", one), "get pods ns=prod name=web-1");
        assert_eq!(
            k("GET", "/apis/apps/v1/deployments"),
            "list deployments.apps"
        );
        let r = req("GET", "/apis/batch/v1beta1/namespaces/prod/cronjobs");
        assert_eq!(
            (r.api_group.as_str(), r.api_version.as_str()),
            ("batch", "v1beta1")
        );
        assert_eq!(req("GET", one).api_version, "v1");
    }

    #[test]
    fn watch_by_query_as_the_apiserver_reads_a_flag() {
        for on in ["true", "1", "TRUE", "yes", ""] {
            let target = format!("/api/v1/namespaces/prod/pods?watch={on}");
            assert_eq!(k("GET", &target), "watch pods ns=prod", "watch={on}");
        }
        for off in ["false", "0", "False", "falſe"] {
            let target = format!("/api/v1/namespaces/prod/pods?watch={off}");
            assert_eq!(k("GET", &target), "list pods ns=prod", "watch={off}");
        }
        // The first value counts, keys are unescaped, pairs with `;` or a
        // bad escape are dropped: Go's url.ParseQuery.
        assert_eq!(k("GET", "/api/v1/pods?watch=0&watch=1"), "list pods");
        assert_eq!(k("GET", "/api/v1/pods?w%61tch=1"), "watch pods");
        assert_eq!(k("GET", "/api/v1/pods?watch=1;x=2"), "list pods");
        assert_eq!(k("GET", "/api/v1/pods?watch=%zz&watch=1"), "watch pods");
        // A named get is a get whatever the query says.
        assert_eq!(k("GET", "/api/v1/pods/a?watch=1"), "get pods name=a");
    }

    #[test]
    fn legacy_watch_path() {
        let path = "/api/v1/watch/namespaces/prod/pods";
        assert_eq!(k("GET", path), "watch pods ns=prod");
        let path = "/apis/apps/v1/watch/deployments/web";
        assert_eq!(k("GET", path), "watch deployments.apps name=web");
    }

    #[test]
    fn writes_map_to_their_verbs() {
        let one = "/api/v1/namespaces/prod/pods/web-1";
        let all = "/api/v1/namespaces/prod/pods";
        assert_eq!(k("DELETE", one), "delete pods ns=prod name=web-1");
        assert_eq!(k("DELETE", all), "deletecollection pods ns=prod");
        assert_eq!(k("POST", all), "create pods ns=prod");
        assert_eq!(k("PUT", one), "update pods ns=prod name=web-1");
        assert_eq!(k("PATCH", one), "patch pods ns=prod name=web-1");
    }

    #[test]
    fn methods_without_a_verb_get_none() {
        assert_eq!(k("OPTIONS", "/api/v1/pods"), " pods");
        // Go compares methods case-sensitively.
        assert_eq!(k("get", "/api/v1/pods"), " pods");
        assert_eq!(req("OPTIONS", "/healthz").verb, "options");
    }

    #[test]
    fn namespaces_themselves() {
        let prod = "/api/v1/namespaces/prod";
        assert_eq!(k("DELETE", prod), "delete namespaces ns=prod name=prod");
        assert_eq!(k("GET", "/api/v1/namespaces"), "list namespaces");
        let finalize = "/api/v1/namespaces/prod/finalize";
        assert_eq!(
            k("PUT", finalize),
            "update namespaces/finalize ns=prod name=prod"
        );
        let status = "/api/v1/namespaces/prod/status";
        assert_eq!(
            k("PATCH", status),
            "patch namespaces/status ns=prod name=prod"
        );
    }

    #[test]
    fn subresources() {
        let scale = "/apis/apps/v1/namespaces/prod/deployments/web/scale";
        assert_eq!(
            k("PATCH", scale),
            "patch deployments.apps/scale ns=prod name=web"
        );
        let status = "/api/v1/namespaces/prod/pods/web-1/status";
        assert_eq!(k("PUT", status), "update pods/status ns=prod name=web-1");
        let evict = "/api/v1/namespaces/prod/pods/web-1/eviction";
        assert_eq!(k("POST", evict), "create pods/eviction ns=prod name=web-1");
        let stats = "/api/v1/nodes/n1/proxy/stats/summary";
        assert_eq!(k("GET", stats), "get nodes/proxy name=n1");
    }

    #[test]
    fn exec_maps_per_method_and_is_a_tunnel() {
        let exec = "/api/v1/namespaces/prod/pods/web-1/exec";
        assert_eq!(k("POST", exec), "create pods/exec ns=prod name=web-1");
        assert_eq!(k("GET", exec), "get pods/exec ns=prod name=web-1");
        let r = classify("GET", exec, "command=ls&stdout=true");
        assert!(is_tunnel(&r));
        assert!(!streams(&r, "command=ls&stdout=true"));
        for sub in ["attach", "portforward", "proxy"] {
            let path = format!("/api/v1/namespaces/prod/pods/web-1/{sub}");
            assert!(is_tunnel(&req("POST", &path)), "{sub}");
        }
        for sub in ["log", "status", "scale", "eviction"] {
            let path = format!("/api/v1/namespaces/prod/pods/web-1/{sub}");
            assert!(!is_tunnel(&req("GET", &path)), "{sub}");
        }
        // A custom PROXY method on a non-resource URL is no tunnel.
        assert!(!is_tunnel(&req("PROXY", "/healthz")));
    }

    #[test]
    fn legacy_proxy_verb_has_no_subresource() {
        let path = "/api/v1/proxy/namespaces/prod/pods/web-1/metrics/x";
        assert_eq!(k("GET", path), "proxy pods ns=prod name=web-1");
        assert!(is_tunnel(&req("GET", path)));
    }

    #[test]
    fn follow_logs_and_watches_stream() {
        let log = "/api/v1/namespaces/prod/pods/web-1/log";
        assert_eq!(k("GET", log), "get pods/log ns=prod name=web-1");
        let r = req("GET", log);
        assert!(streams(&r, "follow=true&container=app"));
        assert!(streams(&r, "container=app&follow=1"));
        assert!(!streams(&r, "follow=false"));
        assert!(!streams(&r, "tailLines=10"));
        let watch = classify("GET", "/api/v1/pods", "watch=true");
        assert!(streams(&watch, "watch=true"));
        assert!(streams(&req("GET", "/api/v1/watch/pods"), ""));
        assert!(!streams(&req("GET", "/api/v1/pods"), ""));
        // follow means nothing to anything but a log read.
        assert!(!streams(&req("GET", "/api/v1/pods"), "follow=true"));
    }

    #[test]
    fn non_resource_urls() {
        let paths = [
            "",
            "/",
            "/api",
            "/apis",
            "/version",
            "/openapi/v3/apis/apps/v1",
            "/healthz",
            "/healthz/ping",
            "/api/v1",
            "/apis/apps",
            "/apis/apps/v1",
            "/metrics/a/b/c",
        ];
        for path in paths {
            for method in ["GET", "POST"] {
                let r = req(method, path);
                assert!(!r.resource_request, "{path}");
                assert_eq!(r.verb, method.to_lowercase());
                assert_eq!(r.path, path);
                assert_eq!(r.resource, "");
                assert_eq!(r.api_version, "");
            }
        }
    }

    #[test]
    fn cluster_scoped() {
        let admin = "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin";
        let expected = "delete clusterroles.rbac.authorization.k8s.io name=admin";
        assert_eq!(k("DELETE", admin), expected);
        assert_eq!(k("GET", "/api/v1/nodes"), "list nodes");
    }

    #[test]
    fn percent_escapes_are_decoded_before_splitting() {
        let path = "/api/v1/namespaces/pr%6Fd/s%65crets/db";
        assert_eq!(k("DELETE", path), "delete secrets ns=prod name=db");
        // Go decodes the whole path first, so %2F separates segments there.
        let path = "/api/v1/namespaces/prod%2Fpods";
        assert_eq!(k("GET", path), "list pods ns=prod");
        let r = req("GET", "/api/v1/namespaces/a%20b/pods/x+y");
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("a b", "x+y"));
        assert_eq!(r.path, "/api/v1/namespaces/a b/pods/x+y");
        // Go refuses a malformed escape; it stays as sent.
        let path = "/api/v1/namespaces/p%zz/pods/%4";
        assert_eq!(k("GET", path), "get pods ns=p%zz name=%4");
        // Bytes that are not UTF-8 cannot spell a real name.
        assert_eq!(req("GET", "/api/v1/pods/%FF").name, "\u{FFFD}");
    }

    #[test]
    fn slashes_split_like_the_apiserver() {
        let path = "//api/v1/namespaces/prod/pods/web-1//";
        assert_eq!(k("GET", path), "get pods ns=prod name=web-1");
        // An empty inner segment stays one: the apiserver authorizes this
        // as a list of pods in every namespace, and policy must see that.
        assert_eq!(k("GET", "/api/v1/namespaces//pods"), "list pods");
        let path = "/api/v1/namespaces/prod/pods//exec";
        assert_eq!(k("DELETE", path), "deletecollection pods/exec ns=prod");
    }

    #[test]
    fn a_special_verb_with_nothing_after_it_stays_partial() {
        // The apiserver errors before authorizing; what was read is kept.
        assert_eq!(k("GET", "/api/v1/watch"), "get ");
        assert_eq!(k("GET", "/apis/apps/v1/proxy/"), "get .apps");
    }

    #[test]
    fn a_metadata_name_field_selector_names_the_object() {
        let name = |q: &str| classify("GET", "/api/v1/namespaces/p/secrets", q).name;
        assert_eq!(name("fieldSelector=metadata.name%3Ddb"), "db");
        assert_eq!(name("fieldSelector=metadata.name%3D%3Ddb"), "db");
        assert_eq!(name("fieldSelector=metadata.name!%3Ddb"), "");
        assert_eq!(
            name("fieldSelector=status.phase%3DUp,metadata.name%3Ddb"),
            "db"
        );
        // The apiserver sorts the terms and takes the first match.
        assert_eq!(
            name("fieldSelector=metadata.name%3Db,metadata.name%3Da"),
            "a"
        );
        assert_eq!(name("fieldSelector=metadata.name%3Da%5C%2Cb"), "a,b");
        // A parse error, or a name no path could hold, drops the name.
        assert_eq!(name("fieldSelector=metadata.name%3Dd%3Db"), "");
        assert_eq!(name("fieldSelector=metadata.name%3Dd%5Cx"), "");
        assert_eq!(name("fieldSelector=metadata.name%3Da,bogus"), "");
        assert_eq!(name("fieldSelector=metadata.name%3D.."), "");
        assert_eq!(name("fieldSelector=metadata.name%3Da%2Fb"), "");
        let path = "/api/v1/pods?watch=1&fieldSelector=metadata.name%3Dx";
        assert_eq!(k("GET", path), "watch pods name=x");
        // Only reads are narrowed this way.
        let path = "/api/v1/pods?fieldSelector=metadata.name%3Dx";
        assert_eq!(k("DELETE", path), "deletecollection pods");
    }

    #[test]
    fn replicas_from_merge_patches() {
        let scale = req("PATCH", "/apis/apps/v1/namespaces/p/deployments/web/scale");
        let deploy = req("PATCH", "/apis/apps/v1/namespaces/p/deployments/web");
        let merge = "application/merge-patch+json";
        let smp = "application/strategic-merge-patch+json";
        let apply = "application/apply-patch+yaml";
        let zero = br#"{"spec":{"replicas":0}}"#;
        assert_eq!(replicas_set(&scale, merge, zero), Some(0));
        assert_eq!(replicas_set(&deploy, smp, zero), Some(0));
        assert_eq!(replicas_set(&deploy, apply, zero), Some(0));
        let float = br#"{"spec":{"replicas":3.0}}"#;
        assert_eq!(replicas_set(&deploy, smp, float), Some(3));
        let labels = br#"{"metadata":{"labels":{"a":"b"}}}"#;
        assert_eq!(replicas_set(&deploy, merge, labels), None);
        assert_eq!(
            replicas_set(&deploy, merge, br#"{"spec":{"paused":true}}"#),
            None
        );
        // A removed count is what decoding and defaulting make of nothing.
        let null = br#"{"spec":{"replicas":null}}"#;
        assert_eq!(replicas_set(&scale, merge, null), Some(0));
        assert_eq!(replicas_set(&deploy, merge, null), Some(1));
        assert_eq!(replicas_set(&scale, merge, br#"{"spec":null}"#), Some(0));
        let two = br#"{"spec":{"replicas":2}}"#;
        for path in [
            "/apis/apps/v1/namespaces/p/statefulsets/x",
            "/apis/apps/v1/namespaces/p/replicasets/x",
            "/api/v1/namespaces/p/replicationcontrollers/x",
            "/apis/apps/v1/namespaces/p/statefulsets/x/scale",
        ] {
            assert_eq!(
                replicas_set(&req("PATCH", path), merge, two),
                Some(2),
                "{path}"
            );
        }
    }

    #[test]
    fn replicas_from_strategic_directives() {
        let scale = req("PATCH", "/apis/apps/v1/namespaces/p/deployments/web/scale");
        let smp = "application/strategic-merge-patch+json; charset=utf-8";
        let set = |b: &str| replicas_set(&scale, smp, b.as_bytes());
        assert_eq!(set(r#"{"spec":{"$patch":"delete"}}"#), Some(0));
        assert_eq!(set(r#"{"spec":{"$patch":"replace"}}"#), Some(0));
        assert_eq!(set(r#"{"$patch":"replace","spec":{}}"#), Some(0));
        assert_eq!(
            set(r#"{"spec":{"$patch":"replace","replicas":4}}"#),
            Some(4)
        );
        assert_eq!(set(r#"{"spec":{"$retainKeys":["selector"]}}"#), Some(0));
        assert_eq!(set(r#"{"spec":{"$retainKeys":["replicas"]}}"#), None);
        // In a JSON merge patch they are just unknown fields.
        let merge = "application/merge-patch+json";
        let plain = br#"{"spec":{"$patch":"delete"}}"#;
        assert_eq!(replicas_set(&scale, merge, plain), None);
    }

    #[test]
    fn replicas_from_whole_objects() {
        let scale = req("PUT", "/apis/apps/v1/namespaces/p/deployments/web/scale");
        let deploy = req("PUT", "/apis/apps/v1/namespaces/p/deployments/web");
        let json = "application/json";
        let five = br#"{"kind":"Scale","spec":{"replicas":5}}"#;
        assert_eq!(replicas_set(&scale, json, five), Some(5));
        // The apiserver reads a body with no type as JSON.
        assert_eq!(replicas_set(&scale, "", five), Some(5));
        // A Scale without a count is a scale to zero; a workload without
        // one is defaulted to 1.
        let none = br#"{"spec":{"template":{}}}"#;
        assert_eq!(replicas_set(&scale, json, none), Some(0));
        assert_eq!(replicas_set(&deploy, json, none), Some(1));
    }

    #[test]
    fn replicas_from_json_patch() {
        let scale = req("PATCH", "/apis/apps/v1/namespaces/p/deployments/web/scale");
        let deploy = req("PATCH", "/apis/apps/v1/namespaces/p/deployments/web");
        let set = |r: &K8sRequest, ops: Value| {
            replicas_set(r, "application/json-patch+json", ops.to_string().as_bytes())
        };
        let replace = json!([{"op": "replace", "path": "/spec/replicas", "value": 0}]);
        assert_eq!(set(&scale, replace.clone()), Some(0));
        assert_eq!(set(&deploy, replace), Some(0));
        let last = json!([
            {"op": "replace", "path": "/spec/replicas", "value": 0},
            {"op": "add", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/metadata/labels/a", "value": "b"},
        ]);
        assert_eq!(set(&deploy, last), Some(3));
        let parent = json!([{"op": "add", "path": "/spec", "value": {"replicas": 7}}]);
        assert_eq!(set(&deploy, parent), Some(7));
        let whole = json!([{"op": "replace", "path": "", "value": {"spec": {}}}]);
        assert_eq!(set(&scale, whole), Some(0));
        let remove = json!([{"op": "remove", "path": "/spec/replicas"}]);
        assert_eq!(set(&scale, remove.clone()), Some(0));
        assert_eq!(set(&deploy, remove), Some(1));
        // A value from the stored object cannot be seen: assume the worst.
        let from = "/spec/minReadySeconds";
        let copy = json!([{"op": "copy", "from": from, "path": "/spec/replicas"}]);
        assert_eq!(set(&deploy, copy), Some(0));
        let away = json!([{"op": "move", "from": "/spec/replicas", "path": "/metadata/x"}]);
        assert_eq!(set(&deploy, away), Some(1));
        let untouched = json!([
            {"op": "test", "path": "/spec/replicas", "value": 1},
            {"op": "copy", "from": "/spec/replicas", "path": "/metadata/x"},
        ]);
        assert_eq!(set(&deploy, untouched), None);
        // Pointer escapes are undone before comparing.
        let escaped = json!([{"op": "replace", "path": "/spec/replicas~1x", "value": 0}]);
        assert_eq!(set(&deploy, escaped), None);
        // A malformed operation fails the whole patch.
        let bad = json!([
            {"op": "replace", "path": "/spec/replicas", "value": 0},
            {"op": "frobnicate", "path": "/x"},
        ]);
        assert_eq!(set(&deploy, bad), None);
        assert_eq!(set(&deploy, json!({"spec": {"replicas": 0}})), None);
    }

    #[test]
    fn replicas_only_where_they_can_be_set() {
        let merge = "application/merge-patch+json";
        let zero = br#"{"spec":{"replicas":0}}"#;
        for (method, path) in [
            ("GET", "/apis/apps/v1/namespaces/p/deployments/web"),
            ("POST", "/apis/apps/v1/namespaces/p/deployments"),
            ("PATCH", "/apis/apps/v1/namespaces/p/deployments/web/status"),
            ("PATCH", "/apis/apps/v1/namespaces/p/daemonsets/web"),
            ("PATCH", "/api/v1/namespaces/p/pods/web"),
            ("GET", "/apis/apps/v1/namespaces/p/deployments/web/scale"),
            ("PATCH", "/deployments/web/scale"),
        ] {
            let r = req(method, path);
            assert_eq!(replicas_set(&r, merge, zero), None, "{method} {path}");
        }
        // Not JSON: YAML, protobuf, a string where a number belongs.
        let scale = req("PATCH", "/apis/apps/v1/namespaces/p/deployments/web/scale");
        assert_eq!(replicas_set(&scale, merge, b"spec:\n  replicas: 0\n"), None);
        assert_eq!(replicas_set(&scale, merge, b"k8s\x00\x0a\x0b"), None);
        let text = br#"{"spec":{"replicas":"0"}}"#;
        assert_eq!(replicas_set(&scale, merge, text), None);
    }

    #[test]
    fn serializes_with_field_names() {
        let v = serde_json::to_value(req("DELETE", "/api/v1/namespaces/prod")).unwrap();
        assert_eq!(v["verb"], "delete");
        assert_eq!(v["resource"], "namespaces");
        assert_eq!(v["resource_request"], true);
    }

    use crate::testing::Rng;

    #[test]
    fn never_panics_on_any_input() {
        const SEGMENTS: &str = "api apis v1 apps namespaces prod pods watch proxy status \
            finalize scale exec log deployments % %2 %2F %zz %C3 %C3%A9 é ſ + ~ . .. \u{0} 日本";
        const METHODS: &str = "GET POST PUT PATCH DELETE HEAD OPTIONS get É";
        const QUERIES: &str = "x watch watch= watch=1 watch=falſe follow=true && = ; % =%zz \
            fieldSelector=metadata.name%3D fieldSelector=%5C fieldSelector=é=é, \
            fieldSelector=metadata.name!=%E6%97%A5";
        const TYPES: &str = "application/json application/json-patch+json \
            application/strategic-merge-patch+json application/merge-patch+json ;;";
        const BODIES: &str = r#"[ null [] {} [null] [{}] [{"op":"move"}]
            [{"op":"move","path":"/spec","from":"x"}] [{"op":"add","path":"/spec"}]
            {"spec":{"replicas":1e400}} {"spec":{"replicas":-9223372036854775809}}
            {"spec":{"replicas":18446744073709551615}} {"spec":[1]}
            {"spec":{"$retainKeys":7,"$patch":[]}}"#;
        let [segments, methods, queries, types, bodies] =
            [SEGMENTS, METHODS, QUERIES, TYPES, BODIES]
                .map(|w| w.split_whitespace().collect::<Vec<_>>());
        let scale = req("PATCH", "/apis/apps/v1/namespaces/p/deployments/web/scale");
        let update = req("PUT", "/apis/apps/v1/namespaces/p/deployments/web");
        let mut resources = 0;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..100_000 {
            let mut path = String::new();
            for _ in 0..rng.next_u64() % 9 {
                path += "/";
                if rng.next_u64().is_multiple_of(5) {
                    path += "/";
                }
                path += rng.pick(&segments);
            }
            let query = [rng.pick(&queries), rng.pick(&queries)].join("&");
            let method = rng.pick(&methods);
            let r = classify(method, &path, &query);
            if !r.resource_request {
                assert_eq!(r.verb, method.to_lowercase());
                assert!(r.resource.is_empty() && r.namespace.is_empty() && r.name.is_empty());
            }
            resources += usize::from(r.resource_request);
            if r.verb == "deletecollection" {
                assert!(r.name.is_empty());
            }
            streams(&r, &query);
            is_tunnel(&r);
            let (ty, body) = (rng.pick(&types), rng.pick(&bodies).as_bytes());
            for r in [&r, &scale, &update] {
                replicas_set(r, ty, body);
            }
        }
        assert!(
            resources > 1_000,
            "the walk reached {resources} resource requests"
        );
        // And noise, byte for byte.
        for _ in 0..20_000 {
            let bytes: Vec<u8> = (0..rng.next_u64() % 40)
                .map(|_| rng.next_u64() as u8)
                .collect();
            let noise = String::from_utf8_lossy(&bytes);
            let r = classify(&noise, &noise, &noise);
            streams(&r, &noise);
            replicas_set(&r, &noise, &bytes);
            replicas_set(&scale, &noise, &bytes);
        }
    }
}
