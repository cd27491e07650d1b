//! What a Kubernetes request does, beyond its verb: whether it is a way to
//! run code or gain power in the cluster (an "exec-equivalent"), which
//! sensitive fields a write changes, and whether its body could be read.
//!
//! Verbs alone miss most of it: `kubectl exec` is held, but creating a pod
//! with any image and service account, patching a deployment's image,
//! adding an ephemeral container (`kubectl debug`), `*/proxy`, minting a
//! service account token, writing RBAC objects, CSRs or admission webhooks
//! all run code or grant power just as well. The fields are found in the
//! decoded body ([`super::k8s_body`]), as every patch type applies it:
//! what a patch names is what it changes, a `$` directive of a strategic
//! merge patch changes its whole map, a JSON Patch operation changes the
//! node it points at.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{
    k8s::{self, K8sRequest},
    k8s_body::{self, Body, Kind},
};

/// Where each kind that runs pods keeps the pod spec (and the template's
/// annotations, where AppArmor and seccomp used to be set).
fn pod_roots(resource: &str) -> Option<(&'static [&'static str], &'static [&'static str])> {
    const TEMPLATE: &[&str] = &["spec", "template", "spec"];
    const TEMPLATE_NOTES: &[&str] = &["spec", "template", "metadata", "annotations"];
    Some(match resource {
        "pods" => (&["spec"], &[]),
        "podtemplates" => (
            &["template", "spec"],
            &["template", "metadata", "annotations"],
        ),
        "deployments"
        | "statefulsets"
        | "daemonsets"
        | "replicasets"
        | "replicationcontrollers"
        | "jobs" => (TEMPLATE, TEMPLATE_NOTES),
        "cronjobs" => (
            &["spec", "jobTemplate", "spec", "template", "spec"],
            &[
                "spec",
                "jobTemplate",
                "spec",
                "template",
                "metadata",
                "annotations",
            ],
        ),
        _ => return None,
    })
}

/// A template annotation that restarts pods without changing what they
/// run (`kubectl rollout restart`).
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// Objects whose writes grant power or run code whatever their content,
/// by API group.
const POWERFUL: &[(&str, &[&str])] = &[
    (
        "rbac.authorization.k8s.io",
        &[
            "roles",
            "clusterroles",
            "rolebindings",
            "clusterrolebindings",
        ],
    ),
    ("certificates.k8s.io", &["certificatesigningrequests"]),
    // An aggregated API server receives the requests of a whole API
    // group; a CRD's conversion webhook receives its objects.
    ("apiregistration.k8s.io", &["apiservices"]),
    ("apiextensions.k8s.io", &["customresourcedefinitions"]),
    (
        "admissionregistration.k8s.io",
        &[
            "mutatingwebhookconfigurations",
            "validatingwebhookconfigurations",
            "validatingadmissionpolicies",
            "validatingadmissionpolicybindings",
            "mutatingadmissionpolicies",
            "mutatingadmissionpolicybindings",
        ],
    ),
];

/// Pod spec fields with a name of their own in `k8s_changes`.
const NAMED_FIELDS: &[(&str, &str)] = &[
    ("image", "image"),
    ("command", "command"),
    ("args", "args"),
    ("serviceAccountName", "serviceAccount"),
    ("serviceAccount", "serviceAccount"),
    ("automountServiceAccountToken", "serviceAccount"),
    ("privileged", "privileged"),
    ("allowPrivilegeEscalation", "privileged"),
    ("capabilities", "privileged"),
    ("securityContext", "privileged"),
    ("hostNetwork", "privileged"),
    ("hostPID", "privileged"),
    ("hostIPC", "privileged"),
    ("ephemeralContainers", "ephemeralContainers"),
];

/// What policy learns about one Kubernetes request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    /// It runs code or grants power in the cluster.
    pub exec_equivalent: bool,
    /// Sensitive things a write changes: `podSpec`, `image`, `command`,
    /// `args`, `serviceAccount`, `privileged`, `hostPath`,
    /// `ephemeralContainers`, `replicas`, `ownerReferences`, `finalizers`;
    /// `unknown` when the body could not be read.
    pub changes: BTreeSet<&'static str>,
    /// "json", "yaml", "unreadable", or "" when no body was read.
    pub body: &'static str,
    /// The replica count a write sets (-1: none).
    pub replicas: i64,
}

/// Whether the request's body must be read before it is decided: every
/// create, update and patch of a resource, except the upgrades (exec,
/// attach, port-forward, proxy) whose body is another protocol.
pub fn reads_body(req: &K8sRequest) -> bool {
    writes(req) && !k8s::is_tunnel(req)
}

fn writes(req: &K8sRequest) -> bool {
    req.resource_request && matches!(req.verb.as_str(), "create" | "update" | "patch")
}

/// Whether the request is an exec-equivalent whatever its body: the
/// proxy verb and subresources (straight to a pod, service or node's
/// kubelet), ephemeral containers, service account tokens, creating
/// anything that runs pods, and writes to RBAC, CSRs and admission
/// control.
pub fn by_request(req: &K8sRequest) -> bool {
    if !req.resource_request {
        return false;
    }
    let write = writes(req);
    let sub = req.subresource.as_str();
    req.verb == "proxy"
        || sub == "proxy"
        || (write && sub == "ephemeralcontainers")
        || (write && req.resource == "serviceaccounts" && sub == "token")
        || (req.verb == "create" && sub.is_empty() && pod_roots(&req.resource).is_some())
        || (write
            && POWERFUL
                .iter()
                .any(|(g, rs)| *g == req.api_group && rs.contains(&req.resource.as_str())))
}

/// The context attributes for a request whose body was not read.
pub fn context(req: Option<&K8sRequest>) -> [(&'static str, Value); 3] {
    [
        ("k8s_exec_equivalent", json!(req.is_some_and(by_request))),
        ("k8s_changes", json!([])),
        ("k8s_body", json!("")),
    ]
}

impl Effect {
    /// Sets this effect's attributes (and `k8s_replicas`) in `context`.
    pub fn apply(&self, context: &mut Value) {
        context["k8s_exec_equivalent"] = json!(self.exec_equivalent);
        context["k8s_changes"] = json!(self.changes);
        context["k8s_body"] = json!(self.body);
        context["k8s_replicas"] = json!(self.replicas);
    }
}

/// The effect of a create, update or patch with this `Content-Type`
/// (raw header) and body.
pub fn of_write(req: &K8sRequest, content_type: Option<&[u8]>, body: &[u8]) -> Effect {
    let mut effect = Effect {
        exec_equivalent: by_request(req),
        changes: BTreeSet::new(),
        body: "",
        replicas: -1,
    };
    let Some(decoded) = k8s_body::decode(&req.verb, content_type, body) else {
        return effect;
    };
    let (kind, doc) = match decoded {
        Body::Read { kind, doc, yaml } => {
            effect.body = if yaml { "yaml" } else { "json" };
            (kind, doc)
        }
        Body::Unreadable(_) => {
            // Nothing is known, so everything is assumed: the worst
            // replica count, and a change to whatever runs pods.
            effect.body = "unreadable";
            effect.changes.insert("unknown");
            effect.exec_equivalent |=
                req.subresource.is_empty() && pod_roots(&req.resource).is_some();
            if k8s::scalable(req) {
                effect.replicas = 0;
            }
            return effect;
        }
    };
    effect.replicas = k8s::replicas_in(req, kind, &doc).unwrap_or(-1);
    if body.iter().all(u8::is_ascii_whitespace) {
        return effect;
    }
    let status = !req.subresource.is_empty();
    // An update replaces the whole pod spec, and a server-side apply
    // removes the fields its manager set before and now leaves out (a
    // security context, a command): neither can be judged by what it names.
    let replaces = matches!(kind, Kind::Object | Kind::Apply) && req.verb != "create";
    if replaces && !status && pod_roots(&req.resource).is_some() {
        effect.changes.insert("podSpec");
    }
    // An update sets the owners and finalizers to what it carries, and
    // nothing when it leaves them out; `namespaces/x/finalize` exists to
    // change finalizers. What they were is not known here.
    if req.verb == "update" && !status {
        effect.changes.extend(["ownerReferences", "finalizers"]);
    }
    if req.subresource == "finalize" {
        effect.changes.insert("finalizers");
    }
    let touched = touched(kind, &doc);
    for t in &touched {
        name_changes(req, t, status, &mut effect);
    }
    effect.exec_equivalent |=
        effect.changes.contains("podSpec") || effect.changes.contains("hostPath");
    effect
}

/// What one changed path means.
fn name_changes(req: &K8sRequest, t: &[String], subresource: bool, effect: &mut Effect) {
    // Compared without case, in case some decoder on the way matches
    // field names as Go's encoding/json does.
    let reaches = |root: &[&str]| t.iter().zip(root).all(|(a, b)| a.eq_ignore_ascii_case(b));
    let changes = &mut effect.changes;
    if t.iter().any(|s| s.eq_ignore_ascii_case("hostPath")) {
        changes.insert("hostPath");
    }
    if reaches(&["metadata", "ownerReferences"]) {
        changes.insert("ownerReferences");
    }
    let namespace_spec = req.resource == "namespaces" && reaches(&["spec", "finalizers"]);
    if reaches(&["metadata", "finalizers"]) || namespace_spec {
        changes.insert("finalizers");
    }
    if reaches(&["spec", "replicas"]) && k8s::scalable(req) {
        changes.insert("replicas");
    }
    // Subresources (status, scale) do not change what pods run.
    let Some((spec, notes)) = pod_roots(&req.resource).filter(|_| !subresource) else {
        return;
    };
    if reaches(spec) {
        changes.insert("podSpec");
        for segment in t.iter().skip(spec.len()) {
            let named = NAMED_FIELDS
                .iter()
                .find(|(f, _)| f.eq_ignore_ascii_case(segment));
            if let Some((_, name)) = named {
                changes.insert(name);
            }
        }
    }
    let restart = t.get(notes.len()).is_some_and(|k| k == RESTARTED_AT);
    if !notes.is_empty() && reaches(notes) && !restart {
        changes.insert("podSpec");
    }
}

/// Every path a write changes (map keys; array elements as `*`), as the
/// server applies a body of this kind.
fn touched(kind: Kind, doc: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    match kind {
        Kind::JsonPatch => {
            let Some(ops) = doc.as_array() else {
                return out;
            };
            for op in ops {
                let at = |field: &str| {
                    let p = op.get(field).and_then(Value::as_str).unwrap_or("");
                    k8s::pointer(p).unwrap_or_default()
                };
                match op.get("op").and_then(Value::as_str).unwrap_or("") {
                    "test" => {}
                    "add" | "replace" => {
                        let path = at("path");
                        if let Some(v) = op.get("value") {
                            leaves(v, &mut path.clone(), &mut out);
                        }
                        out.push(path);
                    }
                    "move" => {
                        out.push(at("from"));
                        out.push(at("path"));
                    }
                    // remove, copy, and anything the server may refuse.
                    _ => out.push(at("path")),
                }
            }
        }
        _ => leaves(doc, &mut Vec::new(), &mut out),
    }
    out
}

/// The leaf paths of a merge-style document; a `$` directive (strategic
/// merge) stands for its whole map, an array replaces the whole list.
fn leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                if k.starts_with('$') {
                    out.push(path.clone());
                    continue;
                }
                path.push(k.clone());
                leaves(child, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            out.push(path.clone());
            path.push("*".into());
            for item in items {
                leaves(item, path, out);
            }
            path.pop();
        }
        _ => out.push(path.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::http::k8s::classify;

    const SMP: &str = "application/strategic-merge-patch+json";
    const MERGE: &str = "application/merge-patch+json";
    const JSONPATCH: &str = "application/json-patch+json";
    const APPLY: &str = "application/apply-patch+yaml";

    fn effect(method: &str, path: &str, ct: &str, body: &str) -> Effect {
        let r = classify(method, path, "");
        of_write(&r, Some(ct.as_bytes()), body.as_bytes())
    }

    fn names(e: &Effect) -> Vec<&'static str> {
        e.changes.iter().copied().collect()
    }

    const DEPLOY: &str = "/apis/apps/v1/namespaces/p/deployments/web";

    #[test]
    fn requests_that_run_code_whatever_their_body() {
        for (method, path) in [
            ("POST", "/api/v1/namespaces/p/pods"),
            ("POST", "/apis/batch/v1/namespaces/p/jobs"),
            ("POST", "/apis/batch/v1/namespaces/p/cronjobs"),
            ("POST", "/apis/apps/v1/namespaces/p/daemonsets"),
            ("POST", "/api/v1/namespaces/p/podtemplates"),
            (
                "PATCH",
                "/api/v1/namespaces/p/pods/web-1/ephemeralcontainers",
            ),
            ("PUT", "/api/v1/namespaces/p/pods/web-1/ephemeralcontainers"),
            ("GET", "/api/v1/nodes/n1/proxy/configz"),
            ("POST", "/api/v1/namespaces/p/pods/web-1/proxy/run"),
            ("GET", "/api/v1/namespaces/p/services/web:80/proxy/"),
            ("GET", "/api/v1/proxy/namespaces/p/pods/web-1/x"),
            ("POST", "/api/v1/namespaces/p/serviceaccounts/default/token"),
            (
                "POST",
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            ),
            (
                "PATCH",
                "/apis/rbac.authorization.k8s.io/v1/namespaces/p/roles/r",
            ),
            (
                "PUT",
                "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
            ),
            (
                "POST",
                "/apis/certificates.k8s.io/v1/certificatesigningrequests",
            ),
            (
                "PUT",
                "/apis/certificates.k8s.io/v1/certificatesigningrequests/c/approval",
            ),
            (
                "POST",
                "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
            ),
            (
                "PATCH",
                "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/v",
            ),
            (
                "POST",
                "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies",
            ),
            ("POST", "/apis/apiregistration.k8s.io/v1/apiservices"),
            (
                "PATCH",
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x",
            ),
        ] {
            assert!(by_request(&classify(method, path, "")), "{method} {path}");
        }
        for (method, path) in [
            ("GET", "/api/v1/namespaces/p/pods"),
            ("GET", "/api/v1/namespaces/p/pods/web-1/log"),
            ("POST", "/api/v1/namespaces/p/configmaps"),
            ("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles"),
            ("GET", "/api/v1/namespaces/p/pods/web-1/ephemeralcontainers"),
            ("POST", "/api/v1/namespaces/p/serviceaccounts"),
            ("PATCH", DEPLOY),
            ("POST", "/apis/example.com/v1/namespaces/p/roles"),
            ("GET", "/version"),
        ] {
            assert!(!by_request(&classify(method, path, "")), "{method} {path}");
        }
    }

    #[test]
    fn patches_that_change_what_pods_run() {
        let image =
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"evil"}]}}}}"#;
        let e = effect("PATCH", DEPLOY, SMP, image);
        assert!(e.exec_equivalent);
        assert_eq!(names(&e), ["image", "podSpec"]);
        let sa = "spec:\n  template:\n    spec:\n      serviceAccountName: admin\n";
        let e = effect("PATCH", DEPLOY, "application/apply-patch+yaml; x=json", sa);
        assert!(
            e.exec_equivalent && e.changes.contains("serviceAccount"),
            "{e:?}"
        );
        assert_eq!(e.body, "yaml");
        let ops =
            r#"[{"op":"add","path":"/spec/template/spec/containers/0/command","value":["sh"]}]"#;
        let e = effect("PATCH", DEPLOY, JSONPATCH, ops);
        assert_eq!(names(&e), ["command", "podSpec"]);
        // A pointer escape does not hide the path.
        let ops =
            r#"[{"op":"replace","path":"/spec/template/spec/containers/0/im~0age","value":"x"}]"#;
        assert!(effect("PATCH", DEPLOY, JSONPATCH, ops).exec_equivalent);
        let ops = r#"[{"op":"move","from":"/metadata/annotations/x","path":"/spec/template"}]"#;
        assert!(effect("PATCH", DEPLOY, JSONPATCH, ops).exec_equivalent);
        let ops = r#"[{"op":"replace","path":"/spec","value":{"replicas":1}}]"#;
        assert!(effect("PATCH", DEPLOY, JSONPATCH, ops).exec_equivalent);
        // Strategic directives stand for their whole map.
        let replace =
            r#"{"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"web"}]}}}}"#;
        assert!(effect("PATCH", DEPLOY, SMP, replace).exec_equivalent);
        let replace = r#"{"spec":{"$patch":"replace","replicas":2}}"#;
        assert!(effect("PATCH", DEPLOY, SMP, replace).exec_equivalent);
        // A host path anywhere: a persistent volume too.
        let pv = r#"{"spec":{"hostPath":{"path":"/"}}}"#;
        let e = effect("POST", "/api/v1/persistentvolumes", "application/json", pv);
        assert!(e.exec_equivalent && e.changes.contains("hostPath"));
        // A pod's spec, a cronjob's template, the AppArmor annotation.
        let e = effect(
            "PATCH",
            "/api/v1/namespaces/p/pods/web-1",
            MERGE,
            r#"{"spec":{"containers":[{"name":"web","image":"x"}]}}"#,
        );
        assert!(e.exec_equivalent);
        let cron = r#"{"spec":{"jobTemplate":{"spec":{"template":{"spec":{"containers":[{"name":"c","args":["x"]}]}}}}}}"#;
        let e = effect(
            "PATCH",
            "/apis/batch/v1/namespaces/p/cronjobs/c",
            MERGE,
            cron,
        );
        assert!(e.exec_equivalent && e.changes.contains("args"));
        let upper = r#"{"Spec":{"Template":{"Spec":{"HostNetwork":true}}}}"#;
        let e = effect("PATCH", DEPLOY, MERGE, upper);
        assert!(
            e.exec_equivalent && e.changes.contains("privileged"),
            "{e:?}"
        );
        let notes = r#"{"spec":{"template":{"metadata":{"annotations":{"container.apparmor.security.beta.kubernetes.io/web":"unconfined"}}}}}"#;
        assert!(effect("PATCH", DEPLOY, MERGE, notes).exec_equivalent);
        // A server-side apply that names only labels may still remove
        // what its field manager set in the pod spec.
        let labels = "metadata:\n  labels:\n    team: a\n";
        assert!(effect("PATCH", DEPLOY, APPLY, labels).exec_equivalent);
        // Updates replace the whole object, pod spec included.
        let put = r#"{"kind":"Deployment","spec":{"replicas":2,"template":{"spec":{"containers":[{"name":"web","image":"nginx"}]}}}}"#;
        assert!(effect("PUT", DEPLOY, "application/json", put).exec_equivalent);
    }

    #[test]
    fn harmless_writes_are_not_exec_equivalents() {
        for (ct, body) in [
            (
                MERGE,
                r#"{"metadata":{"labels":{"team":"a"},"annotations":{"x":"y"}}}"#,
            ),
            (SMP, r#"{"spec":{"replicas":3}}"#),
            (
                JSONPATCH,
                r#"[{"op":"replace","path":"/spec/replicas","value":3},{"op":"test","path":"/spec/template","value":{}}]"#,
            ),
            (
                SMP,
                r#"{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":"now"}}}}}"#,
            ),
            (
                SMP,
                r#"{"spec":{"template":{"metadata":{"labels":{"v":"2"}}}}}"#,
            ),
        ] {
            let e = effect("PATCH", DEPLOY, ct, body);
            assert!(!e.exec_equivalent, "{body}: {e:?}");
            assert!(!e.changes.contains("podSpec"), "{body}");
        }
        let e = effect("PATCH", DEPLOY, SMP, r#"{"spec":{"replicas":3}}"#);
        assert_eq!((names(&e), e.replicas), (vec!["replicas"], 3));
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  LOG_LEVEL: debug\n";
        let e = effect(
            "PATCH",
            "/api/v1/namespaces/p/configmaps/settings",
            APPLY,
            cm,
        );
        assert!(!e.exec_equivalent && e.changes.is_empty(), "{e:?}");
        // The status and scale subresources do not change the pod spec.
        let status = r#"{"spec":{"template":{"spec":{"x":1}}}}"#;
        assert!(!effect("PATCH", &format!("{DEPLOY}/status"), MERGE, status).exec_equivalent);
    }

    #[test]
    fn the_scale_to_zero_bypass_and_unreadable_bodies() {
        let scale = format!("{DEPLOY}/scale");
        let e = effect(
            "PATCH",
            &scale,
            "application/apply-patch+yaml; x=json",
            "spec:\n  replicas: 0\n",
        );
        assert_eq!(e.replicas, 0);
        let e = effect(
            "PATCH",
            &scale,
            "application/apply-patch+yaml",
            "spec:\n  replicas: !!int 0\n",
        );
        assert_eq!((e.body, e.replicas), ("unreadable", 0));
        assert!(e.changes.contains("unknown"));
        assert!(!e.exec_equivalent, "a scale runs nothing new");
        let e = effect(
            "PUT",
            DEPLOY,
            "application/vnd.kubernetes.protobuf",
            "k8s\0",
        );
        assert!(e.exec_equivalent && e.body == "unreadable");
        let e = effect(
            "PATCH",
            "/api/v1/namespaces/p/configmaps/c",
            "text/yaml",
            "a: b",
        );
        assert_eq!(e.body, "unreadable");
        assert!(!e.exec_equivalent);
    }

    #[test]
    fn owner_references_and_finalizers_are_named() {
        let e = effect(
            "PATCH",
            "/api/v1/namespaces/p/configmaps/c",
            MERGE,
            r#"{"metadata":{"ownerReferences":[{"uid":"x"}]}}"#,
        );
        assert_eq!(names(&e), ["ownerReferences"]);
        let e = effect(
            "PATCH",
            "/api/v1/namespaces/p/configmaps/c",
            JSONPATCH,
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        );
        assert_eq!(names(&e), ["finalizers"]);
        let e = effect(
            "PUT",
            "/api/v1/namespaces/dev/finalize",
            "application/json",
            r#"{"spec":{}}"#,
        );
        assert_eq!(names(&e), ["finalizers"]);
        // An update that leaves them out removes them.
        let e = effect(
            "PUT",
            "/api/v1/namespaces/p/configmaps/c",
            "application/json",
            r#"{"metadata":{"name":"c"},"data":{}}"#,
        );
        assert_eq!(names(&e), ["finalizers", "ownerReferences"]);
        let e = effect(
            "PATCH",
            "/api/v1/namespaces/p/configmaps/c",
            JSONPATCH,
            r#"[{"op":"replace","path":"/metadata","value":{}}]"#,
        );
        assert_eq!(names(&e), ["finalizers", "ownerReferences"]);
    }
}
