//! The AWS service models (`models.tsv.gz`, made by `cargo xtask
//! aws-models` from botocore's models) and REST routing with them: which
//! operation a method and path (and the query's required keys) name, the
//! way AWS's servers match their HTTP bindings: a literal segment beats a
//! label, a label beats a greedy label, a route requiring more query
//! literals beats one requiring fewer. Two routes of different operations
//! matching equally, none matching, or the server possibly reading the
//! path otherwise (case, `//`, an encoded `/`, a trailing slash, dot
//! segments) are refused, never guessed.

use std::sync::LazyLock;

use http::Method;

use super::operation::percent_decode;

/// The gzip-compressed TSV (read it with `zcat`).
const DATA: &[u8] = include_bytes!("models.tsv.gz");

/// One service model.
#[derive(Debug)]
pub struct Service {
    /// botocore's name for it (`lambda`, `apigatewayv2`).
    pub id: String,
    /// What requests are signed for: the policy's `aws:<service>`.
    pub signing: String,
    /// The host's first label(s): `lambda`, `streams.dynamodb`.
    pub endpoint: String,
    /// `json`, `query`, `ec2`, `smithy-rpc-v2-cbor`, `rest-json`, `rest-xml`.
    pub protocols: Vec<String>,
    /// JSON's `X-Amz-Target` prefix (and RPCv2 CBOR's service path).
    pub target: Option<String>,
    /// RPC operations, sorted (empty for REST services).
    pub operations: Vec<String>,
    /// REST operations.
    pub routes: Vec<Route>,
}

impl Service {
    pub fn speaks(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|p| p == protocol)
    }

    /// The REST protocol it speaks, if any.
    pub fn rest(&self) -> Option<&'static str> {
        if self.speaks("rest-json") {
            Some("rest-json")
        } else if self.speaks("rest-xml") {
            Some("rest-xml")
        } else {
            None
        }
    }

    /// The model's spelling of an RPC operation: exact, or the one name
    /// that differs only in case (a server matching names without regard
    /// to case runs that one, so that is what is decided).
    pub fn operation(&self, name: &str) -> Option<&str> {
        if let Ok(i) = self.operations.binary_search_by(|o| o.as_str().cmp(name)) {
            return Some(&self.operations[i]);
        }
        let mut folded = self
            .operations
            .iter()
            .filter(|o| o.eq_ignore_ascii_case(name));
        match (folded.next(), folded.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(String),
    Label,
    Greedy,
}

/// One REST operation's HTTP binding.
#[derive(Debug)]
pub struct Route {
    pub operation: String,
    method: Method,
    segments: Vec<Seg>,
    /// Query literals the request must carry: `?uploads` (the key),
    /// `?operation=tag-resource` (key and value).
    query: Vec<(String, Option<String>)>,
}

/// All the models.
#[derive(Debug)]
pub struct Models {
    pub services: Vec<Service>,
}

static MODELS: LazyLock<Result<Models, String>> = LazyLock::new(|| {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(DATA), &mut text)
        .map_err(|e| format!("the AWS models do not decompress: {e}"))?;
    Models::parse(&text)
});

/// The models, parsed on first use.
pub fn models() -> Result<&'static Models, String> {
    MODELS
        .as_ref()
        .map_err(|e| format!("blastgate's AWS models are unusable: {e}"))
}

impl Models {
    pub fn parse(text: &str) -> Result<Models, String> {
        let mut services: Vec<Service> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let bad = |what: &str| format!("models line {}: {what}: {line:?}", n + 1);
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                ["@", id, signing, endpoint, protocols, target] => services.push(Service {
                    id: id.to_string(),
                    signing: signing.to_string(),
                    endpoint: endpoint.to_string(),
                    protocols: protocols.split(',').map(str::to_string).collect(),
                    target: (*target != "-").then(|| target.to_string()),
                    operations: Vec::new(),
                    routes: Vec::new(),
                }),
                [name] => services
                    .last_mut()
                    .ok_or_else(|| bad("an operation before any service"))?
                    .operations
                    .push(name.to_string()),
                [name, method, uri] => {
                    let route = Route::parse(name, method, uri).map_err(|e| bad(&e))?;
                    services
                        .last_mut()
                        .ok_or_else(|| bad("an operation before any service"))?
                        .routes
                        .push(route);
                }
                _ => return Err(bad("not a service, operation or route")),
            }
        }
        for s in &mut services {
            s.operations.sort();
        }
        Ok(Models { services })
    }

    /// The services an `*.amazonaws.com` host's endpoint prefix serves.
    pub fn by_endpoint(&self, prefix: &str) -> Vec<&Service> {
        self.services
            .iter()
            .filter(|s| s.endpoint == prefix)
            .collect()
    }

    /// The services requests signed for `name` may be meant for.
    pub fn by_signing(&self, name: &str) -> Vec<&Service> {
        self.services.iter().filter(|s| s.signing == name).collect()
    }
}

impl Route {
    fn parse(name: &str, method: &str, uri: &str) -> Result<Route, String> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let path = path
            .strip_prefix('/')
            .ok_or_else(|| "a request URI not starting with /".to_string())?;
        let segments: Vec<Seg> = path
            .split('/')
            .map(|s| match s {
                "{}" => Ok(Seg::Label),
                "{+}" => Ok(Seg::Greedy),
                s if s.contains(['{', '}']) => Err(format!("a partial label in {s:?}")),
                s => Ok(Seg::Literal(s.to_string())),
            })
            .collect::<Result<_, _>>()?;
        if segments.iter().filter(|s| **s == Seg::Greedy).count() > 1 {
            return Err("two greedy labels".into());
        }
        let query = query
            .split('&')
            .filter(|q| !q.is_empty())
            .map(|q| match q.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (q.to_string(), None),
            })
            .collect();
        Ok(Route {
            operation: name.to_string(),
            method,
            segments,
            query,
        })
    }

    /// The label values if `segs` fits the path (literals compared as
    /// given or, for `fold`, without regard to case).
    fn fit(&self, segs: &[String], fold: bool) -> Option<Vec<String>> {
        let same = |lit: &str, s: &str| {
            if fold {
                lit.eq_ignore_ascii_case(s)
            } else {
                lit == s
            }
        };
        let one = |pattern: &Seg, s: &String, labels: &mut Vec<String>| match pattern {
            Seg::Literal(l) => same(l, s),
            Seg::Label if !s.is_empty() => {
                labels.push(s.clone());
                true
            }
            _ => false,
        };
        let mut labels = Vec::new();
        match self.segments.iter().position(|s| *s == Seg::Greedy) {
            None => {
                if segs.len() != self.segments.len() {
                    return None;
                }
                for (p, s) in self.segments.iter().zip(segs) {
                    if !one(p, s, &mut labels) {
                        return None;
                    }
                }
            }
            Some(g) => {
                let after = self.segments.len() - g - 1;
                if segs.len() < self.segments.len() {
                    return None;
                }
                for (p, s) in self.segments[..g].iter().zip(&segs[..g]) {
                    if !one(p, s, &mut labels) {
                        return None;
                    }
                }
                let greedy = segs[g..segs.len() - after].join("/");
                if greedy.is_empty() {
                    return None;
                }
                labels.push(greedy);
                for (p, s) in self.segments[g + 1..]
                    .iter()
                    .zip(&segs[segs.len() - after..])
                {
                    if !one(p, s, &mut labels) {
                        return None;
                    }
                }
            }
        }
        Some(labels)
    }

    /// Whether the request's query carries every literal the route needs.
    fn wants(&self, query: &[(String, String)]) -> bool {
        self.query.iter().all(|(k, v)| {
            query
                .iter()
                .any(|(qk, qv)| qk == k && v.as_ref().is_none_or(|v| v == qv))
        })
    }

    /// How specific the route is: per segment literal 2, label 1, greedy
    /// 0, then how many query literals it needs.
    fn rank(&self) -> (Vec<u8>, usize) {
        let segs = self
            .segments
            .iter()
            .map(|s| match s {
                Seg::Literal(_) => 2,
                Seg::Label => 1,
                Seg::Greedy => 0,
            })
            .collect();
        (segs, self.query.len())
    }
}

/// What a REST request routes to.
#[derive(Debug, PartialEq, Eq)]
pub struct Routed {
    pub operation: String,
    pub protocol: &'static str,
    /// The URI labels' values, percent-decoded: the function, the hosted
    /// zone, the ARN the request acts on.
    pub resources: Vec<String>,
}

/// A route and the label values one reading of the path gives it.
type Fit<'a> = (&'a Service, &'a Route, Vec<String>);

/// The most specific route(s) of `services` for one reading of the path;
/// an error when the query selects otherwise than the path does.
fn best<'a>(
    services: &[&'a Service],
    method: &Method,
    segs: &[String],
    query: &[(String, String)],
    fold: bool,
) -> Result<Vec<Fit<'a>>, String> {
    let mut fits: Vec<Fit<'a>> = Vec::new();
    let mut near: Vec<&Route> = Vec::new();
    for s in services {
        for r in &s.routes {
            if r.method != method {
                continue;
            }
            let Some(labels) = r.fit(segs, fold) else {
                continue;
            };
            if r.wants(query) {
                fits.push((s, r, labels));
            } else if r
                .query
                .iter()
                .any(|(k, _)| query.iter().any(|(qk, _)| qk == k))
            {
                near.push(r);
            }
        }
    }
    let Some(top) = fits.iter().map(|(_, r, _)| r.rank()).max() else {
        return Ok(fits);
    };
    fits.retain(|(_, r, _)| r.rank() == top);
    let chosen: Vec<&Route> = fits.iter().map(|(_, r, _)| *r).collect();
    let takes = |k: &str| chosen.iter().any(|c| c.query.iter().any(|(ck, _)| ck == k));
    // The request carries a query literal of another operation's route
    // that the chosen one does not name (`?List=ALL` with an unexpected
    // value, `?mode=import` beside a path literal that outranks it): a
    // server weighing the query otherwise would run that operation.
    for r in near.iter().copied().chain(
        services
            .iter()
            .flat_map(|s| &s.routes)
            .filter(|r| r.method == method && r.wants(query) && r.fit(segs, fold).is_some()),
    ) {
        if chosen.iter().all(|c| c.operation != r.operation)
            && r.query
                .iter()
                .any(|(k, _)| query.iter().any(|(qk, _)| qk == k) && !takes(k))
        {
            return Err(format!(
                "{method} {} carries a query key of {}, which is not what its path selects ({})",
                segs.join("/"),
                r.operation,
                chosen
                    .iter()
                    .map(|c| c.operation.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(fits)
}

fn operations(fits: &[Fit<'_>]) -> Vec<String> {
    let mut ops: Vec<String> = fits.iter().map(|(_, r, _)| r.operation.clone()).collect();
    ops.sort();
    ops.dedup();
    ops
}

/// Routes a REST request among `services` (those of one endpoint or
/// signing name): `Ok(None)` when no route fits.
pub fn route(
    services: &[&Service],
    method: &Method,
    path: &str,
    query: &str,
) -> Result<Option<Routed>, String> {
    let raw = path
        .strip_prefix('/')
        .ok_or_else(|| format!("the path {path:?} does not start with /"))?;
    let decode = |s: &str| {
        percent_decode(s).ok_or_else(|| format!("{s:?} is not valid percent-encoded UTF-8"))
    };
    let strict: Vec<String> = raw.split('/').map(decode).collect::<Result<_, _>>()?;
    let query: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    // Other readings a server (or a front end before it) might make.
    let whole: Vec<String> = decode(raw)?.split('/').map(str::to_string).collect();
    let backslashed: Vec<String> = raw
        .replace('\\', "/")
        .split('/')
        .map(decode)
        .collect::<Result<_, _>>()?;
    let mut collapsed: Vec<String> = strict.clone();
    let last_empty = collapsed.len() > 1 && collapsed.last().is_some_and(String::is_empty);
    collapsed.retain(|s| !s.is_empty());
    if last_empty || collapsed.is_empty() {
        collapsed.push(String::new());
    }
    // Servers and front ends drop a trailing slash; none adds one.
    let mut trimmed = strict.clone();
    if trimmed.len() > 1 && trimmed.last().is_some_and(String::is_empty) {
        trimmed.pop();
    }
    for reading in [&strict, &whole, &backslashed] {
        if reading.iter().any(|s| s == "." || s == "..") {
            return Err(format!(
                "the path {path:?} has a dot segment, which a server may resolve to another resource"
            ));
        }
    }
    let fits = best(services, method, &strict, &query, false)?;
    let ops = operations(&fits);
    let operation = match ops.as_slice() {
        [] => return Ok(None),
        [one] => one.clone(),
        many => {
            return Err(format!(
                "{method} {path} fits more than one operation ({}): the server's choice cannot be known",
                many.join(", ")
            ))
        }
    };
    let readings: [(&str, &Vec<String>, bool); 5] = [
        ("without regard to case", &strict, true),
        ("with %2F decoded as /", &whole, false),
        ("with \\ as /", &backslashed, false),
        ("with empty segments dropped", &collapsed, false),
        ("without its trailing slash", &trimmed, false),
    ];
    for (how, segs, fold) in readings {
        let other = operations(&best(services, method, segs, &query, fold)?);
        if let Some(o) = other.iter().find(|o| **o != operation) {
            return Err(format!(
                "{method} {path} is {operation}, but read {how} it is {o}: the server could run either"
            ));
        }
    }
    let (service, _, labels) = &fits[0];
    Ok(Some(Routed {
        operation,
        protocol: service.rest().unwrap_or("rest-json"),
        resources: labels.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(signing: &str) -> Vec<&'static Service> {
        models().expect("models").by_signing(signing)
    }

    fn op(
        signing: &str,
        method: Method,
        path: &str,
        query: &str,
    ) -> Result<Option<Routed>, String> {
        route(&group(signing), &method, path, query)
    }

    #[test]
    fn the_models_parse_and_cover_known_services() {
        let m = models().expect("models");
        assert!(m.services.len() > 400, "{}", m.services.len());
        let lambda = m.by_endpoint("lambda");
        assert!(lambda
            .iter()
            .any(|s| s.id == "lambda" && s.rest() == Some("rest-json")));
        let r53 = &m.by_endpoint("route53")[0];
        assert_eq!(
            (r53.signing.as_str(), r53.rest()),
            ("route53", Some("rest-xml"))
        );
        let sm = &m.by_signing("secretsmanager")[0];
        assert_eq!(sm.target.as_deref(), Some("secretsmanager"));
        assert_eq!(sm.operation("GetSecretValue"), Some("GetSecretValue"));
        let ec2 = &m.by_signing("ec2")[0];
        assert!(ec2.speaks("ec2"));
        assert_eq!(
            ec2.operation("terminateINSTANCES"),
            Some("TerminateInstances")
        );
        // SQS moved to JSON but its server still takes Action=.
        let sqs = &m.by_signing("sqs")[0];
        assert!(sqs.speaks("json") && sqs.speaks("query"));
        assert_eq!(m.by_endpoint("email")[0].signing, "ses");
    }

    #[test]
    fn rest_json_and_rest_xml_routes() {
        let cases = [
            (
                "lambda",
                Method::GET,
                "/2015-03-31/functions/prod-fn",
                "",
                "GetFunction",
                vec!["prod-fn"],
            ),
            (
                "lambda",
                Method::DELETE,
                "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A1%3Afunction%3Aprod",
                "Qualifier=1",
                "DeleteFunction",
                vec!["arn:aws:lambda:us-east-1:1:function:prod"],
            ),
            (
                "lambda",
                Method::POST,
                "/2015-03-31/functions/f/invocations",
                "",
                "Invoke",
                vec!["f"],
            ),
            (
                "route53",
                Method::GET,
                "/2013-04-01/hostedzone",
                "",
                "ListHostedZones",
                vec![],
            ),
            (
                "route53",
                Method::DELETE,
                "/2013-04-01/hostedzone/Z123",
                "",
                "DeleteHostedZone",
                vec!["Z123"],
            ),
            (
                "route53",
                Method::GET,
                "/2013-04-01/hostedzonecount",
                "",
                "GetHostedZoneCount",
                vec![],
            ),
            (
                "route53",
                Method::POST,
                "/2013-04-01/hostedzone/Z1/rrset/",
                "",
                "ChangeResourceRecordSets",
                vec!["Z1"],
            ),
        ];
        for (svc, m, path, q, want, res) in cases {
            let r = op(svc, m.clone(), path, q)
                .unwrap_or_else(|e| panic!("{m} {path}: {e}"))
                .unwrap_or_else(|| panic!("{m} {path}: no route"));
            assert_eq!(r.operation, want, "{m} {path}");
            assert_eq!(r.resources, res, "{m} {path}");
        }
    }

    /// Attack: path spellings a server may read as another resource or
    /// operation are refused; the plain spelling beside each still routes.
    #[test]
    fn path_tricks_are_refused() {
        // A `..` (raw or encoded) that would climb to another resource.
        for path in [
            "/2015-03-31/functions/x/../prod",
            "/2015-03-31/functions/%2E%2E/functions/prod",
            "/2015-03-31/functions/x%2F..%2Fprod/policy",
        ] {
            assert!(op("lambda", Method::DELETE, path, "").is_err(), "{path}");
        }
        // An encoded slash in a label: GetPolicy of function "a" read
        // with the slash decoded first is GetFunction... of "a/policy".
        let r = op(
            "lambda",
            Method::GET,
            "/2015-03-31/functions/a%2Fpolicy",
            "",
        );
        assert!(r.is_err(), "{r:?}");
        // A label value that is an ARN with a slash stays one label
        // where no other route could take it.
        let tagged = op(
            "lambda",
            Method::GET,
            "/2017-03-31/tags/arn%3Aaws%3Alambda%3Aus-east-1%3A1%3Afunction%3Af",
            "",
        )
        .expect("routes")
        .expect("a route");
        assert_eq!(tagged.operation, "ListTags");
        // Case: /HostedZone/… is no route as sent; read without regard to
        // case it would be one, and it is refused only when that differs.
        let r = op("route53", Method::DELETE, "/2013-04-01/HostedZone/Z1", "");
        assert_eq!(r, Ok(None));
        // `//` and the trailing slash: no route as sent is no route.
        assert_eq!(
            op("lambda", Method::GET, "/2015-03-31//functions/prod", ""),
            Ok(None)
        );
        assert_eq!(
            op("lambda", Method::GET, "/2015-03-31/functions/", ""),
            Ok(None)
        );
    }

    /// Bindings that differ only in members the request names elsewhere
    /// (S3's `GET /{Bucket}?analytics`, with `id` or without) tie: refused.
    #[test]
    fn equal_bindings_of_two_operations_are_refused() {
        let m = models().expect("models");
        let s3: Vec<&Service> = m.services.iter().filter(|s| s.id == "s3").collect();
        let r = route(&s3, &Method::GET, "/b", "analytics");
        assert!(
            r.as_ref().is_err_and(|e| e.contains("more than one")),
            "{r:?}"
        );
        let r = route(&s3, &Method::GET, "/b", "").expect("routes");
        assert_eq!(r.map(|r| r.operation), Some("ListObjects".to_string()));
    }

    /// Attack: a query key that makes the request another operation.
    #[test]
    fn query_literals_select_and_are_not_ignored() {
        let m = models().expect("models");
        let s3control = m.by_endpoint("s3-control");
        // PUT /v20180820/bucket/{}/tagging vs …?other keys.
        let plain = route(&s3control, &Method::GET, "/v20180820/bucket/b/tagging", "")
            .expect("routes")
            .expect("a route");
        assert_eq!(plain.operation, "GetBucketTagging");
        // A route that needs a literal is chosen over one that does not.
        let routed = m
            .services
            .iter()
            .find(|s| {
                s.routes
                    .iter()
                    .any(|r| r.query.iter().any(|(k, v)| k == "operation" && v.is_some()))
            })
            .expect("a model with ?operation= literals");
        let lit = routed
            .routes
            .iter()
            .find(|r| r.query.iter().any(|(k, _)| k == "operation"))
            .expect("route");
        let path: String = lit
            .segments
            .iter()
            .map(|s| match s {
                Seg::Literal(l) => format!("/{l}"),
                _ => "/x".into(),
            })
            .collect();
        let q: String = lit
            .query
            .iter()
            .map(|(k, v)| format!("{k}={}", v.clone().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("&");
        let r = route(&[routed], &lit.method, &path, &q).expect("routes");
        assert_eq!(
            r.map(|r| r.operation),
            Some(lit.operation.clone()),
            "{path}?{q}"
        );
    }

    /// Every REST operation of every model, sent as its SDK sends it,
    /// routes to itself among the services of its endpoint, or is refused
    /// as ambiguous: never to another operation.
    #[test]
    fn every_rest_operation_routes_to_itself_or_is_refused() {
        let m = models().expect("models");
        let mut refused = Vec::new();
        let mut total = 0;
        // S3 itself is routed by hand (operation.rs), for the
        // sub-resources its model's bindings do not tell apart.
        for s in m.services.iter().filter(|s| s.id != "s3") {
            let peers: Vec<&Service> = m
                .by_endpoint(&s.endpoint)
                .into_iter()
                .filter(|p| p.id != "s3")
                .collect();
            for r in &s.routes {
                total += 1;
                let path: String = r
                    .segments
                    .iter()
                    .map(|seg| match seg {
                        Seg::Literal(l) => format!("/{l}"),
                        Seg::Label => "/lbl".into(),
                        Seg::Greedy => "/gr/eedy".into(),
                    })
                    .collect();
                let path = if path.is_empty() { "/".into() } else { path };
                let q: String = r
                    .query
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => format!("{k}={v}"),
                        None => k.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join("&");
                match route(&peers, &r.method, &path, &q) {
                    Ok(Some(got)) => assert_eq!(
                        got.operation, r.operation,
                        "{} {} {path}?{q}",
                        s.id, r.method
                    ),
                    Ok(None) => panic!("{} {} {path}?{q}: no route", s.id, r.method),
                    Err(e) => refused.push(format!("{}: {e}", s.id)),
                }
            }
        }
        eprintln!(
            "{} of {total} REST bindings refused:\n{}",
            refused.len(),
            refused.join("\n")
        );
        // The models' own ambiguities (the same binding for two
        // operations) are few; they are refused rather than guessed.
        assert!(
            refused.len() <= 10,
            "{} of {total} refused:\n{}",
            refused.len(),
            refused.join("\n")
        );
    }
}
