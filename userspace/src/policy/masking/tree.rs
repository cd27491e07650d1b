//! The tree walk HTTP JSON masking used before the streaming masker
//! (`json.rs`): the whole document as a `serde_json::Value`, each
//! `json_paths` entry walked over it in turn, then the detectors over
//! every string and key. Kept only as the reference the streaming masker is
//! tested against (lib tests, the `json_mask` fuzz target and bench, with
//! the `json-mask-reference` feature).

use std::collections::HashSet;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Value};

use super::{MaskPlan, Masking, Step, MASKING_FILE};

impl MaskPlan {
    /// Masks a JSON document in place: field rules' paths first (whole
    /// values), then detectors over every remaining string and key. Returns the
    /// number of masked values.
    pub fn mask_json(&self, doc: &mut Value) -> u64 {
        self.mask_json_at(doc, 0)
    }

    fn mask_json_at(&self, doc: &mut Value, nesting: usize) -> u64 {
        let mut count = 0;
        for f in &self.fields {
            for path in &f.json_paths {
                visit(doc, path, &mut |v| {
                    let text = match &*v {
                        Value::String(s) => s.clone(),
                        Value::Null => return,
                        other => other.to_string(),
                    };
                    *v = Value::String(self.apply(f.style, &text));
                    count += 1;
                });
            }
        }
        if !self.detectors.is_empty() || self.has_json_paths() {
            count += self.scan_json(doc, nesting);
        }
        count
    }

    fn scan_json(&self, v: &mut Value, nesting: usize) -> u64 {
        match v {
            Value::String(s) => {
                let mut document = false;
                if super::json::may_nest(s, nesting) {
                    if let Ok(mut inner) = serde_json::from_str::<Value>(s) {
                        document = true;
                        let n = self.mask_json_at(&mut inner, nesting + 1);
                        if n > 0 {
                            *s = inner.to_string();
                            return n;
                        }
                    }
                }
                if !document && self.lenient_key_hit(s) {
                    *s = self.apply(super::Style::Fixed, s);
                    return 1;
                }
                let (masked, n) = self.scan(s);
                if n > 0 {
                    *s = masked;
                }
                n
            }
            Value::Array(items) => items.iter_mut().map(|i| self.scan_json(i, nesting)).sum(),
            Value::Object(map) => {
                let mut n = 0;
                for (key, mut value) in std::mem::take(map) {
                    n += self.scan_json(&mut value, nesting);
                    let key = match self.detect_key(&key) {
                        Some((masked, k)) => {
                            n += k;
                            masked
                        }
                        None => key,
                    };
                    map.insert(key, value);
                }
                n
            }
            _ => 0,
        }
    }
}

fn visit(v: &mut Value, path: &[Step], f: &mut dyn FnMut(&mut Value)) {
    let Some((step, rest)) = path.split_first() else {
        f(v);
        return;
    };
    match step {
        Step::Key(k) => {
            if let Some(child) = v.as_object_mut().and_then(|m| m.get_mut(k)) {
                visit(child, rest, f);
            }
        }
        Step::Index(i) => {
            if let Some(child) = v.as_array_mut().and_then(|a| a.get_mut(*i)) {
                visit(child, rest, f);
            }
        }
        Step::AnyIndex => {
            if let Some(items) = v.as_array_mut() {
                for child in items {
                    visit(child, rest, f);
                }
            }
        }
        Step::Descend(k) => match v {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    if key == k {
                        visit(child, rest, f);
                    }
                    visit(child, path, f);
                }
            }
            Value::Array(items) => {
                for child in items {
                    visit(child, path, f);
                }
            }
            _ => {}
        },
    }
}

/// The document `cargo xtask bench --only http` masks (its `big_doc`): a
/// 100 KB list, one email per item and nothing a shipped detector takes
/// for a secret; the tests and the `json_mask` bench use it too.
pub fn sample_list() -> String {
    let mut items = Vec::new();
    let mut len = 0;
    let mut i = 0u64;
    while len < 100 * 1024 {
        let item = json!({
            "id": i,
            "sku": format!("SKU-{i:06}"),
            "name": format!("widget {i}"),
            "email": format!("user{i}@example.com"),
            "price_cents": 100 + (i * 37) % 9000,
            "in_stock": !i.is_multiple_of(3),
            "tags": ["hardware", "bench"],
            "note": "An ordinary catalogue entry.",
        });
        len += item.to_string().len() + 1;
        items.push(item);
        i += 1;
    }
    format!(
        "{}\n",
        json!({"page": 1, "total": items.len(), "items": items})
    )
}

/// Whether some object repeats a key (decoded): the one case where the
/// streaming masker masks more than the tree did.
pub fn has_dup_keys(text: &[u8]) -> bool {
    struct Dups(bool);
    impl<'de> Deserialize<'de> for Dups {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dups, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Dups;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("JSON")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Dups, A::Error> {
                    let (mut seen, mut dup) = (HashSet::new(), false);
                    while let Some(k) = map.next_key::<String>()? {
                        dup |= !seen.insert(k);
                        dup |= map.next_value::<Dups>()?.0;
                    }
                    Ok(Dups(dup))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dups, A::Error> {
                    let mut dup = false;
                    while let Some(d) = seq.next_element::<Dups>()? {
                        dup |= d.0;
                    }
                    Ok(Dups(dup))
                }
                fn visit_bool<E>(self, _: bool) -> Result<Dups, E> {
                    Ok(Dups(false))
                }
                fn visit_i64<E>(self, _: i64) -> Result<Dups, E> {
                    Ok(Dups(false))
                }
                fn visit_u64<E>(self, _: u64) -> Result<Dups, E> {
                    Ok(Dups(false))
                }
                fn visit_f64<E>(self, _: f64) -> Result<Dups, E> {
                    Ok(Dups(false))
                }
                fn visit_str<E>(self, _: &str) -> Result<Dups, E> {
                    Ok(Dups(false))
                }
                fn visit_unit<E>(self) -> Result<Dups, E> {
                    Ok(Dups(false))
                }
            }
            d.deserialize_any(V)
        }
    }
    serde_json::from_slice::<Dups>(text).is_ok_and(|d| d.0)
}

/// The differential check the tests and the `json_mask` fuzz target make
/// of the streaming masker against this tree walk: both read the same
/// documents as JSON; what the streaming masker sends reads back as the
/// tree's masked document; the counts agree (the streaming one counts
/// more only where an object repeats a key, masking every occurrence);
/// nothing masked means the bytes as they came. The number of values
/// masked, or what went wrong.
pub fn differential(plan: &MaskPlan, text: &[u8]) -> Result<u64, String> {
    let shown = || String::from_utf8_lossy(text).into_owned();
    match (
        serde_json::from_slice::<Value>(text),
        plan.mask_json_bytes(text),
    ) {
        (Err(_), Err(_)) => Ok(0),
        (Ok(mut doc), Ok(masked)) => {
            let n = plan.mask_json(&mut doc);
            let sent = String::from_utf8_lossy(&masked.body).into_owned();
            let got: Value = serde_json::from_slice(&masked.body)
                .map_err(|e| format!("sent {sent:?}, not JSON ({e}), for {:?}", shown()))?;
            if got != doc {
                return Err(format!(
                    "sent {sent:?}, the tree masked {doc}, for {:?}",
                    shown()
                ));
            }
            let counted = if has_dup_keys(text) {
                masked.fields >= n
            } else {
                masked.fields == n
            };
            if !counted {
                return Err(format!(
                    "{} values masked, the tree masked {n}, in {:?}",
                    masked.fields,
                    shown()
                ));
            }
            if masked.fields == 0 && *masked.body != *text {
                return Err(format!(
                    "nothing masked yet sent {sent:?} for {:?}",
                    shown()
                ));
            }
            Ok(masked.fields)
        }
        (old, new) => Err(format!(
            "serde_json {:?}, streaming {:?}, on {:?}",
            old.map(|_| ()),
            new.map(|m| m.fields),
            shown()
        )),
    }
}

/// The shipped rules.
pub const SHIPPED: &str = include_str!("../../../../policies/masking.toml");

/// One field rule on every `email`, at any depth.
pub const EMAIL_RULE: &str = r#"
[[field]]
id = "e"
json_paths = ["$..email"]
style = "fixed"
"#;

/// Rule sets that exercise the walk: indexes, `..` (at every depth, inside
/// a match too), containers masked whole after their insides, rules
/// masking a value again, detectors after paths.
pub const RULE_SETS: &[&str] = &[
    "",
    EMAIL_RULE,
    r#"
[[field]]
id = "items"
json_paths = ["$.items[*].email", "$.a[0]", "$.a[2].b"]
style = "hash"
"#,
    r#"
[[field]]
id = "one"
json_paths = ["$..a", "$..user.email"]
style = "last4"
[[field]]
id = "two"
json_paths = ["$.a", "$..b", "$..c..a", "$.x[*]"]
style = "hash"
[[detector]]
kind = "phone"
style = "fixed"
"#,
    r#"
[[field]]
id = "containers"
json_paths = ["$..data", "$..items"]
style = "last4"
[[field]]
id = "after"
json_paths = ["$..email", "$..data"]
style = "fixed"
[[detector]]
kind = "email"
style = "hash"
[[detector]]
kind = "iban"
style = "fixed"
"#,
];

/// A plan per rule set in [`RULE_SETS`], then the shipped rules on a
/// target their field rule names (`orders-*`) and on one it does not, and
/// the shipped rules with the busiest rule set.
pub fn reference_plans() -> Vec<MaskPlan> {
    let plan = |text: &str, target: &str| {
        Masking::parse(std::path::Path::new(MASKING_FILE), text)
            .map(|m| m.plan("agent", target))
            .unwrap_or_default()
    };
    RULE_SETS
        .iter()
        .map(|r| plan(r, "orders-api"))
        .chain([
            plan(SHIPPED, "orders-api"),
            plan(SHIPPED, "bench"),
            plan(&format!("{SHIPPED}\n{}", RULE_SETS[3]), "orders-api"),
        ])
        .collect()
}
