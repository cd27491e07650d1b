//! The streaming JSON masker against the tree walk it replaced: attacks
//! one by one, then generated documents under many rule sets.

use serde_json::Value;

use super::{
    tree::{self, EMAIL_RULE, SHIPPED},
    MaskPlan, Masking, NotJson,
};

/// The plan for a target the shipped field rule (`orders-*`) names.
fn plan(toml_text: &str) -> MaskPlan {
    plan_for(toml_text, "orders-api")
}

fn plan_for(toml_text: &str, target: &str) -> MaskPlan {
    Masking::parse(std::path::Path::new("masking.toml"), toml_text)
        .unwrap_or_else(|p| panic!("{p:?}"))
        .plan("agent", target)
}

/// One field rule: `json_paths` in `style`.
fn field_plan(paths: &[&str], style: &str) -> MaskPlan {
    let paths: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
    plan(&format!(
        "[[field]]\nid = \"f\"\njson_paths = [{}]\nstyle = \"{style}\"\n",
        paths.join(", ")
    ))
}

/// The differential check ([`tree::differential`]), failing the test.
fn check(plan: &MaskPlan, text: &[u8]) -> u64 {
    tree::differential(plan, text).unwrap_or_else(|e| panic!("{e}"))
}

fn masked(plan: &MaskPlan, text: &str) -> (String, u64) {
    let m = plan
        .mask_json_bytes(text.as_bytes())
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    check(plan, text.as_bytes());
    (String::from_utf8(m.body.into_owned()).unwrap(), m.fields)
}

#[test]
fn unmasked_spans_are_copied_byte_for_byte() {
    let p = plan(EMAIL_RULE);
    let text = "{ \"id\" : 1.50e0,\n\t\"email\":\"a@b.example\" , \"n\":\"caf\\u00e9\" }\r\n";
    let (out, n) = masked(&p, text);
    assert_eq!(n, 1);
    assert_eq!(
        out,
        "{ \"id\" : 1.50e0,\n\t\"email\":\"****\" , \"n\":\"caf\\u00e9\" }\r\n"
    );
    // Nothing to mask: the very bytes.
    let same = "[1 ,2,{\"x\" :\"y\"}] ";
    assert_eq!(masked(&p, same), (same.to_string(), 0));
}

#[test]
fn escaped_keys_are_the_keys_a_client_reads() {
    let p = field_plan(&["$.items[*].email", "$..password"], "fixed");
    for key in [
        "\\u0065mail",
        "e\\u006dail",
        "\\u0065\\u006D\\u0061\\u0069\\u006C",
    ] {
        let text = format!("{{\"items\":[{{\"{key}\":\"ann@example.com\"}}]}}");
        let (out, n) = masked(&p, &text);
        assert_eq!(n, 1, "{text}");
        assert!(!out.contains("ann@"), "{out}");
    }
    let (out, n) = masked(&p, r#"{"a":{"pass\u0077ord":"hunter2"}}"#);
    assert_eq!((n, out.contains("hunter2")), (1, false));
    // A key that only looks like one on the wire is not it.
    let (_, n) = masked(&p, r#"{"items":[{"email\u0000":"ann@example.com"}]}"#);
    assert_eq!(n, 0);
}

#[test]
fn detectors_read_values_unescaped() {
    let p = plan(&format!(
        "{SHIPPED}\n[[detector]]\nkind = \"email\"\nstyle = \"fixed\"\n"
    ));
    for value in [
        r#""ann\u0040example.com""#,
        r#""\u0041KIAIOSFODNN7EXAMPLE""#,
        r#""key \u0041KIA\u0049OSFODNN7EXAMPLE\/""#,
        r#""-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----""#,
        r#""4111\u00201111 1111 1111""#,
        r#""Bearer\tabcdefgh12345678""#,
    ] {
        let text = format!("{{\"note\":{value}}}");
        let (out, n) = masked(&p, &text);
        assert_eq!(n, 1, "{text} -> {out}");
    }
    // A top-level string is scanned too.
    let (out, n) = masked(&p, "\"AKIAIOSFODNN7EXAMPLE\"");
    assert_eq!((out.as_str(), n), ("\"****\"", 1));
    // Keys are scanned too (see `detectors_read_keys`), numbers never.
    let (out, n) = masked(&p, r#"{"ann@example.com": 4111111111111111}"#);
    assert_eq!(n, 1);
    assert!(out.contains("4111111111111111"), "{out}");
}

#[test]
fn surrogate_pairs_and_lone_surrogates() {
    let p = plan(EMAIL_RULE);
    let (out, n) = masked(&p, r#"{"x":"\ud83d\ude00","email":"\ud83d\ude00@x"}"#);
    assert_eq!(n, 1);
    assert!(out.starts_with(r#"{"x":"\ud83d\ude00","#), "{out}");
    // What serde_json refuses is refused: the caller masks it as text.
    for text in [
        r#"{"email":"\ud800"}"#,
        r#"{"email":"\udc00"}"#,
        r#"{"email":"\ud800\u0041"}"#,
        r#"{"email":"\ud800\n"}"#,
        r#"{"email":"\ud83d"#,
        r#"{"email":"\u12"}"#,
        r#"{"email":"\x"}"#,
    ] {
        assert!(p.mask_json_bytes(text.as_bytes()).is_err(), "{text}");
        check(&p, text.as_bytes());
    }
}

#[test]
fn repeated_keys_mask_every_occurrence() {
    let p = field_plan(&["$..password", "$.user.email"], "fixed");
    // The tree kept the last (null: nothing masked) and so sent the
    // original bytes: a client reading the first value got the secret.
    let text = r#"{"password":"s3cret","password":null}"#;
    let mut doc: Value = serde_json::from_str(text).unwrap();
    assert_eq!(p.mask_json(&mut doc), 0);
    let (out, n) = masked(&p, text);
    assert_eq!(
        (out.as_str(), n),
        (r#"{"password":"****","password":null}"#, 1)
    );
    let (out, n) = masked(
        &p,
        r#"{"user":{"email":"a@b.example"},"user":1,"u\u0073er":{"email":"c@d.example"}}"#,
    );
    assert_eq!(n, 2);
    assert!(!out.contains("a@b") && !out.contains("c@d"), "{out}");
}

#[test]
fn nesting_is_refused_where_serde_json_refuses_it() {
    let p = plan(EMAIL_RULE);
    for depth in [126, 127, 128, 129] {
        let text = format!(
            "{}{{\"email\":\"a@b.example\"}}{}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        );
        let ok = serde_json::from_str::<Value>(&text).is_ok();
        assert_eq!(ok, depth < 128, "{depth}");
        assert_eq!(p.mask_json_bytes(text.as_bytes()).is_ok(), ok, "{depth}");
    }
    // Far deeper: refused at the limit, not by overflowing the stack.
    let text = "[".repeat(1_000_000);
    assert_eq!(
        p.mask_json_bytes(text.as_bytes()).err().map(|e| e.why),
        Some("nested too deep")
    );
}

#[test]
fn numbers_read_and_mask_as_serde_json_reads_them() {
    let p = field_plan(&["$.a", "$.b"], "last4");
    for a in [
        "0",
        "-0",
        "1e2",
        "1E+2",
        "-1.25e-3",
        "4111111111111111",
        "18446744073709551616",
        "123456789012345678901234567890",
        "1e300",
        "1e-400",
        "0e999999",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
        "1e400",
        "-1e400",
        &"9".repeat(400),
        &format!("0.{}1", "0".repeat(400)),
        "01",
        "1.",
        ".5",
        "+1",
        "-",
        "1e",
        "1e+",
        "0x10",
        "NaN",
        "Infinity",
        "-Infinity",
        "true",
        "false",
        "null",
    ] {
        let text = format!("{{\"a\":{a},\"b\":[{a}]}}");
        check(&p, text.as_bytes());
    }
    assert_eq!(masked(&p, r#"{"a":1e2}"#).0, r#"{"a":"****00.0"}"#);
    assert_eq!(masked(&p, r#"{"a":true}"#).0, r#"{"a":"****"}"#);
    assert_eq!(masked(&p, r#"{"a":null}"#), (r#"{"a":null}"#.into(), 0));
}

#[test]
fn odd_bodies_are_refused_as_serde_json_refuses_them() {
    let p = plan(SHIPPED);
    for text in [
        &b"\xef\xbb\xbf{\"email\":\"a@b.example\"}"[..],
        b"{\"email\":\"a@b.\xff\"}",
        b"{\"email\":\"a@b.\xc3\"}",
        b"\x0c{}",
        b"{}\x0c",
        b"{} {}",
        b"{\"a\":1,}",
        b"[1,]",
        b"{\"a\" 1}",
        b"{'a':1}",
        b"{a:1}",
        b"[1 2]",
        b"\"tab\there\"",
        b"",
        b"   ",
        b"nul",
        b"truex",
        b"[true false]",
        b"{\"a\":1}}",
        b"\"\\u00e9\"",
        b"42",
        b"null",
        b" \"x\" ",
        b"\t[]\n\r ",
    ] {
        check(&p, text);
    }
}

#[test]
fn every_truncation_of_a_document_is_read_as_serde_json_reads_it() {
    let p = plan(&format!("{SHIPPED}\n{EMAIL_RULE}"));
    let text = r#"{"items":[{"email":"a@b.example","n":-1.5e3,"t":true,"z":null,"s":"\ud83d\ude00 4111 1111 1111 1111","k":"AKIAIOSFODNN7EXAMPLE"}],"e\u006dail":[]}"#;
    for end in 0..=text.len() {
        check(&p, &text.as_bytes()[..end]);
    }
}

#[test]
fn rules_apply_in_order_each_to_what_the_earlier_left() {
    // An inner value masked first, then its container whole (`hash` of
    // the masked container's text), then again by a later path.
    let p = plan(
        r#"
[[field]]
id = "inner"
json_paths = ["$..email"]
style = "last4"
[[field]]
id = "outer"
json_paths = ["$.user", "$..user", "$.user.name"]
style = "hash"
[[detector]]
kind = "email"
style = "fixed"
"#,
    );
    let text = r#"{"user":{"email":"a@b.example","name":"ann@example.com"},"note":"x@y.example","email":null}"#;
    let (out, n) = masked(&p, text);
    // email (1) + user twice (2) + note by the detector (1).
    assert_eq!(n, 4, "{out}");
    // A container masked whole by the first rule: later rules below it
    // find nothing.
    let p = plan(
        r#"
[[field]]
id = "outer"
json_paths = ["$.user"]
style = "last4"
[[field]]
id = "inner"
json_paths = ["$..email"]
style = "fixed"
"#,
    );
    let (out, n) = masked(&p, r#"{"user":{"email":"a@b.example", "x":[1, 2.0]}}"#);
    assert_eq!((out.as_str(), n), (r#"{"user":"****.0]}"}"#, 1));
    // `$..a.b` stops at the first `a` (the tree's walk did too).
    let p = field_plan(&["$..a.b", "$.l[1]", "$.l[*].c"], "fixed");
    masked(
        &p,
        r#"{"a":{"a":{"b":1}},"x":{"a":{"b":2}},"l":[{"c":1},{"c":2}]}"#,
    );
}

/// A small deterministic generator (xorshift): the same documents on
/// every run.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }

    fn ws(&mut self) -> &'static str {
        self.pick(&["", "", "", " ", "\n", "\t", "\r\n  "])
    }

    /// `s` as a JSON string, some characters spelled as `\u` escapes.
    fn string(&mut self, s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '/' if self.below(2) == 0 => out.push_str("\\/"),
                c if (c as u32) < 0x20 || self.below(6) == 0 => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn value(&mut self, depth: usize) -> String {
        let kind = if depth > 4 {
            2 + self.below(4)
        } else {
            self.below(6)
        };
        match kind {
            0 => {
                let n = self.below(5);
                let members: Vec<String> = (0..n)
                    .map(|_| {
                        let key = self.pick(&[
                            "email", "phone", "password", "items", "a", "b", "c", "user", "note",
                            "data", "x", "card",
                        ]);
                        let key = self.string(key);
                        let (w1, w2) = (self.ws(), self.ws());
                        format!("{w1}{key}{w2}:{}{}", self.ws(), self.value(depth + 1))
                    })
                    .collect();
                format!("{{{}{}}}", members.join(","), self.ws())
            }
            1 => {
                let n = self.below(5);
                let items: Vec<String> = (0..n)
                    .map(|_| format!("{}{}", self.ws(), self.value(depth + 1)))
                    .collect();
                format!("[{}{}]", items.join(","), self.ws())
            }
            2 | 3 => {
                let s = self.pick(&[
                    "ann@example.com",
                    "user7@example.com",
                    "4111 1111 1111 1111",
                    "AKIAIOSFODNN7EXAMPLE",
                    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
                    "Bearer abcdefgh12345678",
                    "+44 20 7946 0958",
                    "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
                    "GB82WEST12345698765432",
                    "plain",
                    "",
                    "caf\u{e9} \u{1F600} \"q\" \\ /",
                    "tab\there",
                ]);
                self.string(s)
            }
            4 => self
                .pick(&[
                    "0",
                    "-0",
                    "42",
                    "1.5",
                    "1e2",
                    "-1.25E-3",
                    "4111111111111111",
                    "123456789012345678901234567890",
                    "1e300",
                ])
                .to_string(),
            _ => self.pick(&["true", "false", "null"]).to_string(),
        }
    }
}

#[test]
fn generated_documents_mask_as_the_tree_did() {
    let plans = tree::reference_plans();
    assert!(plans[1..].iter().all(|p| !p.is_empty()));
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let mut masked_total = 0;
    for round in 0..3000 {
        let text = format!("{}{}{}", g.ws(), g.value(0), g.ws());
        for p in &plans {
            masked_total += check(p, text.as_bytes());
        }
        // The same document damaged: a byte dropped, changed or cut off.
        let mut bytes = text.clone().into_bytes();
        let at = g.below(bytes.len());
        match round % 3 {
            0 => {
                bytes.remove(at);
            }
            1 => {
                let with = b"\"\\{}[],:u0e\x01\xff ";
                bytes[at] = with[g.below(with.len())];
            }
            _ => bytes.truncate(at),
        }
        for p in &plans {
            check(p, &bytes);
        }
    }
    assert!(masked_total > 1000, "{masked_total}");
}

#[test]
fn the_bench_list_masks_as_the_tree_did() {
    let doc = super::tree::sample_list();
    let field = plan(
        r#"
[[field]]
id = "bench-item-email"
json_paths = ["$.items[*].email"]
style = "hash"
"#,
    );
    let n = check(&field, doc.as_bytes());
    assert!(n > 500, "{n}");
    // The shipped detectors find nothing in it; the shipped field rule
    // (on `orders-*` targets) masks every email.
    assert_eq!(check(&plan_for(SHIPPED, "bench"), doc.as_bytes()), 0);
    assert_eq!(check(&plan(SHIPPED), doc.as_bytes()), n);
}

#[test]
fn not_json_says_where() {
    let p = plan(EMAIL_RULE);
    assert_eq!(
        p.mask_json_bytes(b"{\"a\":1,}").err(),
        Some(NotJson {
            at: 7,
            why: "expected a key"
        })
    );
}

/// Attack: `$..a.b` missed the `b` of an `a` inside another `a`
/// (`{"a":{"a":{"b":…}}}`): the descent stopped at the first `a`.
#[test]
fn a_descent_finds_its_name_inside_itself() {
    let p = field_plan(&["$..a.b"], "fixed");
    let (out, n) = masked(
        &p,
        r#"{"a":{"b":"one","a":{"b":"two","x":{"a":{"b":"three"}}}}}"#,
    );
    assert_eq!(n, 3, "{out}");
    for v in ["one", "two", "three"] {
        assert!(!out.contains(v), "{out}");
    }
    // In arrays, and a lone `$..a` masks the outer one whole.
    let (out, n) = masked(&p, r#"[{"a":[{"a":{"b":"deep"}}]}]"#);
    assert_eq!((n, out.contains("deep")), (1, false), "{out}");
    let whole = field_plan(&["$..a"], "hash");
    let (out, n) = masked(&whole, r#"{"a":{"a":"inner"}}"#);
    assert_eq!((n, out.contains("inner")), (1, false), "{out}");
}

/// Attack: a map keyed by what the detectors mask (an email address, a
/// card number) hands them over as keys, which were never scanned.
/// Numbers stay unscanned: IDs and timestamps are numbers.
#[test]
fn detectors_read_keys() {
    let p = plan(
        "[[detector]]\nkind = \"email\"\nstyle = \"fixed\"\n\
         [[detector]]\nkind = \"card\"\nstyle = \"last4\"\n",
    );
    let (out, n) = masked(
        &p,
        r#"{"byUser":{"ann@example.com":{"orders":3},"4111 1111 1111 1111":"visa"}}"#,
    );
    assert_eq!(n, 2, "{out}");
    assert!(!out.contains("ann@"), "{out}");
    assert!(!out.contains("4111 1111"), "{out}");
    // Hashed whatever the style, so the members stay distinct.
    assert!(out.contains("\"hash:"), "{out}");
    let (out, n) = masked(&p, r#"{"ts":4111111111111111,"id":1733563200}"#);
    assert_eq!(n, 0, "{out}");
    // An escaped key is scanned as a client reads it.
    let (out, n) = masked(&p, r#"{"ann\u0040example.com":1}"#);
    assert_eq!((n, out.contains("example.com")), (1, false), "{out}");
}

/// Red team (fidelity): keys are now scanned, and the shipped `card`
/// detector takes any 13–19 digit run that passes Luhn either way round.
/// Maps keyed by millisecond timestamps or snowflake IDs (JSON keys are
/// always strings: a metrics series, Discord's `resolved.users`) lose
/// roughly one key in five to `****0000`, and two such keys collide, so a
/// client's map silently drops an entry. Numbers are left alone for this
/// very reason (README: "never numbers (they would mask timestamps and
/// long identifiers)"), but the same identifiers as keys are not.
#[test]
fn red_team_timestamp_keys_are_not_masked_as_cards() {
    let p = plan(SHIPPED);
    // 2024-12-07 09:20:00 and 09:23:00 UTC in milliseconds: both pass Luhn.
    let text = r#"{"series":{"1733563200000":41.5,"1733563260000":40.0,"1733563380000":39.5}}"#;
    let m = p.mask_json_bytes(text.as_bytes()).expect("JSON");
    let out = String::from_utf8(m.body.into_owned()).unwrap();
    let doc: Value = serde_json::from_str(&out).unwrap();
    let series = doc["series"].as_object().unwrap();
    assert_eq!(series.len(), 3, "keys collapsed: {out}");
    assert!(
        out.contains("1733563200000") && out.contains("1733563380000"),
        "timestamp keys masked as card numbers: {out}"
    );
}

/// Red team (fidelity): two keys a detector masks with a `fixed` or
/// `last4` style become the same key: `{"ann@…":1,"bob@…":2}` reaches the
/// agent as `{"****":1,"****":2}`, which every client reads as one
/// member (Python, JavaScript and serde keep the last). The tree walk
/// (the reference) merges them where the streaming masker emits both.
#[test]
fn red_team_masked_keys_stay_distinct_members() {
    let p = plan("[[detector]]\nkind = \"email\"\nstyle = \"fixed\"\n");
    let text = r#"{"byUser":{"ann@example.com":{"orders":3},"bob@example.com":{"orders":5}}}"#;
    let m = p.mask_json_bytes(text.as_bytes()).expect("JSON");
    let out = String::from_utf8(m.body.into_owned()).unwrap();
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc["byUser"].as_object().unwrap().len(),
        2,
        "two users became one: {out}"
    );
}

/// Red team (leak, a limit of path rules): the agent names the keys. A
/// GraphQL API answers under the aliases the query asks for (`{
/// customer(id: 1) { mail: email } }` answers `{"data":{"customer":
/// {"mail":…}}}`), as do Elasticsearch `script_fields`/SQL `AS`: a rule
/// that masks `$..email` by name never sees the key. Paths cannot hold
/// here (README says so); what does is a detector for the value, which
/// reads it under any name.
#[test]
fn red_team_a_graphql_alias_renames_a_path_masked_field() {
    let names_only = plan(EMAIL_RULE);
    let doc = r#"{"data":{"customer":{"mail":"alice@example.com","email":"x"}}}"#;
    let (out, _) = masked(&names_only, doc);
    assert!(out.contains("alice@example.com"), "{out}");
    let p = plan(&format!(
        "{EMAIL_RULE}\n[[detector]]\nkind = \"email\"\nstyle = \"fixed\"\n"
    ));
    let (out, _) = masked(&p, doc);
    assert!(
        !out.contains("alice@example.com"),
        "aliased field passed: {out}"
    );
}

/// Red team (leak, path rules): a string holding a JSON document is now
/// masked as a document of its own, but only when serde_json reads the
/// string as strict JSON. What a client reads as the same document with
/// one more step passes with its path-masked fields as they were, though
/// the same bodies at the top level are refused (README: "Python's `json`
/// and JavaScript parsers read such bodies"):
///
/// - a config file kept in a Kubernetes ConfigMap (`kubectl create cm
///   --from-file=appsettings.json`): ASP.NET Core's `appsettings.json`
///   takes `//` comments and trailing commas (and the template ships
///   comments), VS Code / tsconfig files are JSONC, Windows editors write
///   a UTF-8 byte-order mark (`json.loads(s.encode())` drops it);
/// - JSON Lines held in a string (an export, a log field, a ConfigMap
///   `events.jsonl`): `[json.loads(l) for l in s.splitlines()]`;
/// - Python's `json.dumps` writes `NaN` for a float NaN by default, and
///   `json.loads` reads it back;
/// - a document encoded twice (`json.dumps(json.dumps(obj))`, a common
///   bug, and API Gateway/Lambda bodies): the string holds a JSON string,
///   which holds the document.
///
/// `kubectl get cm app -o json` then hands over the database password a
/// `$..Password` rule masks everywhere else.
#[test]
fn red_team_lenient_json_inside_a_string_is_masked_by_path() {
    let p = field_plan(&["$..Password"], "fixed");
    let config = r#"{"ConnectionStrings":{"Db":{"Password":"hunter2-s3cret"}}}"#;
    let wrap = |inner: &str| {
        serde_json::json!({"kind": "ConfigMap", "data": {"appsettings.json": inner}}).to_string()
    };
    // Strict: masked (the commit's case).
    let (out, n) = masked(&p, &wrap(config));
    assert!(n == 1 && !out.contains("hunter2"), "{out}");
    let mut leaks = Vec::new();
    for (what, inner) in [
        (
            "a // comment (appsettings.json)",
            format!("// database\n{config}"),
        ),
        (
            "a trailing comma (JSONC, JSON5)",
            r#"{"ConnectionStrings":{"Db":{"Password":"hunter2-s3cret",}}}"#.to_string(),
        ),
        ("a UTF-8 byte-order mark", format!("\u{feff}{config}")),
        (
            "JSON Lines",
            format!("{config}\n{{\"Password\":\"hunter2-other\"}}\n"),
        ),
        (
            "Python's NaN",
            r#"{"score": NaN, "Password": "hunter2-s3cret"}"#.to_string(),
        ),
        (
            "a document encoded twice",
            serde_json::to_string(config).unwrap(),
        ),
    ] {
        let doc = wrap(&inner);
        let (out, _) = masked(&p, &doc);
        if out.contains("hunter2") {
            leaks.push(format!("{what}: {out}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "path-masked fields inside strings passed:\n{}",
        leaks.join("\n")
    );
    // Look-alikes keep every byte: lenient documents without the key, a
    // sentence naming it, the key as a value.
    for inner in [
        "// logging\n{\"Logging\":{\"Level\":\"Info\",},}",
        "level: info\nuser: app\n",
        "the Password field is required",
        r#"{"field": "Password"}"#,
    ] {
        let doc = wrap(inner);
        let (out, n) = masked(&p, &doc);
        assert!(n == 0 && out == doc, "{out}");
    }
}

/// Red team (held): the differential between the streaming masker and
/// the tree for documents nested in strings (the generator never makes
/// any): generated documents wrapped once, twice and nine times in
/// strings, with leading whitespace, under every reference plan.
#[test]
fn red_team_nested_documents_mask_as_the_tree_does() {
    let plans = tree::reference_plans();
    let mut g = Gen(0x2545_f491_4f6c_dd1d);
    let mut total = 0;
    for _ in 0..300 {
        let mut text = format!("{}{}", g.ws(), g.value(1));
        let deep = 1 + g.below(10);
        for _ in 0..deep {
            let inner = format!("{}{}", g.pick(&["", " ", "\n", "\t\r\n"]), text);
            let key = g.pick(&["note", "data", "a", "x"]);
            text = format!(
                "{{\"{key}\":{},\"email\":\"z@example.com\"}}",
                g.string(&inner)
            );
            if g.below(3) == 0 {
                text = format!("[{text}]");
            }
        }
        for p in &plans {
            // A key repeated inside a nested document is masked at every
            // occurrence there too, which `has_dup_keys` (reading the
            // outer document) does not know: more counted is fine, the
            // documents must agree.
            total += match tree::differential(p, text.as_bytes()) {
                Ok(n) => n,
                Err(e) if more_counted(&e) => 1,
                // The deliberate difference: a repeated key, inside.
                Err(_) if nested_dups(text.as_bytes()) => 0,
                Err(e) => panic!("{e}"),
            };
        }
    }
    assert!(total > 100, "{total}");
}

/// Whether an object repeats a key, in the document or in one nested in
/// a string.
fn nested_dups(text: &[u8]) -> bool {
    fn strings(v: &Value) -> bool {
        match v {
            Value::String(s) => nested_dups(s.as_bytes()),
            Value::Array(a) => a.iter().any(strings),
            Value::Object(m) => m.values().any(strings),
            _ => false,
        }
    }
    tree::has_dup_keys(text) || serde_json::from_slice::<Value>(text).is_ok_and(|v| strings(&v))
}

/// Whether a differential failure says only that the streaming masker
/// counted more values than the tree.
fn more_counted(e: &str) -> bool {
    let Some((streaming, rest)) = e.split_once(" values masked, the tree masked ") else {
        return false;
    };
    let tree: u64 = rest
        .split(',')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    streaming.parse::<u64>().is_ok_and(|s| s > tree)
}

/// Red team (was a leak, a limit): nine strings deep a document is past
/// the strict masker's depth (README: "up to 8 deep"); its key is still
/// found by the lenient scan, and the string is masked whole. Eight deep
/// it is masked by path, the rest of it kept.
#[test]
fn red_team_a_document_nine_strings_deep_is_masked_whole() {
    let p = field_plan(&["$..Password"], "fixed");
    let wrapped = |deep: usize| {
        let mut text = r#"{"Password":"hunter2-s3cret","user":"svc-reader"}"#.to_string();
        for _ in 0..deep {
            text = serde_json::json!({ "wrapped": text }).to_string();
        }
        text
    };
    let (out, n) = masked(&p, &wrapped(9));
    assert!(
        n == 1 && !out.contains("hunter2") && !out.contains("svc-reader"),
        "{out}"
    );
    let (out, n) = masked(&p, &wrapped(8));
    assert!(
        n == 1 && !out.contains("hunter2") && out.contains("svc-reader"),
        "{out}"
    );
}

/// Red team (leak, detectors; the price of the timestamp-key fix): a key
/// of digits alone is now never scanned, so a map keyed by card number
/// (a tokenization vault's reverse index `{"<PAN>":"tok_…"}`, a fraud
/// report grouped by card) hands every PAN over, where the same number
/// as a string value, or as a key written with spaces, is masked. The
/// shipped `card` detector is one of the "secrets that must never reach
/// an agent's context window, wherever they appear".
#[test]
fn red_team_a_card_number_key_is_masked() {
    let p = plan(SHIPPED);
    let (value, _) = masked(&p, r#"{"pan":"4111111111111111"}"#);
    assert!(!value.contains("4111111111111111"), "{value}");
    let (key, _) = masked(&p, r#"{"by_pan":{"4111111111111111":"tok_9f8e"}}"#);
    assert!(
        !key.contains("4111111111111111"),
        "a card number as a key passed: {key}"
    );
}
