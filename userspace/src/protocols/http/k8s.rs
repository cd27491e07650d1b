//! Placeholder until the Kubernetes request mapper lands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct K8sRequest {
    pub verb: String,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
    pub resource_request: bool,
}

pub fn classify(method: &str, path: &str, _query: &str) -> K8sRequest {
    K8sRequest {
        verb: method.to_ascii_lowercase(),
        api_group: String::new(),
        api_version: String::new(),
        resource: String::new(),
        subresource: String::new(),
        namespace: String::new(),
        name: String::new(),
        path: path.to_string(),
        resource_request: false,
    }
}

pub fn streams(_req: &K8sRequest, _query: &str) -> bool {
    false
}

pub fn replicas_set(_req: &K8sRequest, _content_type: &str, _body: &[u8]) -> Option<i64> {
    None
}
