//! Strings that hold a document only a lenient reader reads.
//!
//! A `json_paths` rule reaches into a string that holds a JSON document
//! (`kubectl apply`'s annotation, exports wrapped in strings), but only a
//! document serde_json reads. The agent's own tools read more: ASP.NET's
//! `appsettings.json` and tsconfig take comments and trailing commas,
//! editors write a byte-order mark, Python writes and reads `NaN`, exports
//! are JSON Lines, documents get encoded twice, and ConfigMaps hold YAML
//! (`password: …`). A password under `$..Password` in any of those would
//! pass as text.
//!
//! blastgate does not try to be each of those parsers. A string that is not
//! a document it masked as one is searched for the names path rules end
//! on (any case, quoted either way or bare, escapes decoded to any depth
//! of strings inside strings) standing as keys (before a `:` after
//! blanks and comments); if one is found, the whole string is
//! masked with style `fixed`: nothing of it is shown, since `last4` of a
//! document could end in the secret. What is lost is the rest of that
//! string, for an agent reading a look-alike; what is kept is the secret.

use super::{MaskPlan, Step};

/// Strings inside strings followed this deep (as the strict masker's
/// `MAX_NESTED`): an attacker's deeper nesting is still scanned as text.
const MAX_DEPTH: usize = 16;

impl MaskPlan {
    /// Whether a lenient reader of `text` finds a key that a `json_paths`
    /// rule ends on.
    pub(crate) fn lenient_key_hit(&self, text: &str) -> bool {
        // A `:` may also be spelled as an escape (`\u003a`).
        if !text.contains([':', '\\']) {
            return false;
        }
        let names: Vec<&str> = self
            .fields
            .iter()
            .flat_map(|f| f.lenient_keys.iter().map(String::as_str))
            .collect();
        !names.is_empty() && scan(text, &names)
    }
}

/// The key each of `paths` ends on (the value under it is what it
/// masks), folded as [`scan`] compares.
pub(super) fn keys(paths: &[Vec<Step>]) -> Vec<String> {
    paths
        .iter()
        .filter_map(|path| {
            path.iter().rev().find_map(|s| match s {
                Step::Key(k) | Step::Descend(k) => Some(fold(k)),
                Step::Index(_) | Step::AnyIndex => None,
            })
        })
        .collect()
}

/// Whether a key in `names` (folded, see [`fold`]) is in `text` as any lenient
/// reader spells it. Not a tokenizer: an apostrophe in prose (`it's`) or
/// an unclosed quote would make one swallow the key. Each occurrence of a
/// name that does not continue a longer word counts when what follows it,
/// past closing quotes, backslashes, blanks and comments, is a `:`. The
/// text is read as it is, and again with its escapes decoded, as many
/// times as that changes it (a document encoded twice, `\u0050assword`).
fn scan(text: &str, names: &[&str]) -> bool {
    let mut current = text.to_string();
    for _ in 0..=MAX_DEPTH {
        let folded = fold(&current);
        if names.iter().any(|name| keyed(&folded, name)) {
            return true;
        }
        let chars: Vec<char> = current.chars().collect();
        let decoded = unescape(&chars);
        if decoded == current {
            return false;
        }
        current = decoded;
    }
    // Still decoding past the depth followed: fail closed.
    true
}

/// Lower case, with the letters some readers' case-insensitive matching
/// folds to ASCII (Go's `EqualFold`: `ſ` is `s`, `ı` is `i`).
fn fold(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| match c {
            'ſ' => 's',
            'ı' => 'i',
            c => c,
        })
        .collect()
}

/// Occurrences of one name in one string examined before the string is
/// masked unexamined: each costs up to [`LOOKAHEAD`], and an attacker's
/// string of `password/*` repeated must not cost its length squared.
const MAX_OCCURRENCES: usize = 64;

/// How far past a name the `:` is looked for; a key whose `:` is further
/// (behind a long comment) counts as found.
const LOOKAHEAD: usize = 1024;

/// Whether `name` occurs in `text` as a key (see [`scan`]).
fn keyed(text: &str, name: &str) -> bool {
    text.match_indices(name)
        .filter(|(at, _)| !text[..*at].chars().next_back().is_some_and(continues_word))
        .enumerate()
        .any(|(n, (at, _))| n >= MAX_OCCURRENCES || colon_follows(&text[at + name.len()..]))
}

/// A character that makes a name part of a longer word or identifier.
fn continues_word(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '$')
}

/// Whether `rest` is closing quotes, backslashes, blanks (a byte-order
/// mark among them) and comments (`//`, `/* */`, `#`), then a `:`.
fn colon_follows(rest: &str) -> bool {
    let whole = rest.len();
    let mut rest = rest;
    loop {
        if whole - rest.len() > LOOKAHEAD {
            return true;
        }
        let Some(c) = rest.chars().next() else {
            return false;
        };
        if c == ':' {
            return true;
        }
        if c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | '\u{feff}') {
            rest = &rest[c.len_utf8()..];
        } else if let Some(comment) = rest.strip_prefix("/*") {
            let window = &comment[..comment.floor_char_boundary(LOOKAHEAD)];
            rest = match window.find("*/") {
                Some(end) => &comment[end + 2..],
                None if window.len() < comment.len() => return true,
                None => "",
            };
        } else if rest.starts_with("//") || c == '#' {
            let window = &rest[..rest.floor_char_boundary(LOOKAHEAD)];
            rest = match window.find(['\n', '\r', '\u{2028}', '\u{2029}']) {
                Some(end) => &rest[end..],
                None if window.len() < rest.len() => return true,
                None => "",
            };
        } else {
            return false;
        }
    }
}

/// Backslash escapes decoded as JSON and JSON5 read them: `\uXXXX` (and
/// surrogate pairs), `\xXX`, `\n` and friends, and any other escaped
/// character as itself.
fn unescape(chars: &[char]) -> String {
    let mut out = String::with_capacity(chars.len());
    let mut units: Vec<u16> = Vec::new();
    let mut i = 0;
    let flush = |units: &mut Vec<u16>, out: &mut String| {
        out.extend(char::decode_utf16(units.drain(..)).map(|r| r.unwrap_or('\u{fffd}')));
    };
    while i < chars.len() {
        if chars[i] != '\\' || i + 1 == chars.len() {
            flush(&mut units, &mut out);
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let hex = |from: usize, n: usize| -> Option<u32> {
            let digits: String = chars.get(from..from + n)?.iter().collect();
            u32::from_str_radix(&digits, 16).ok()
        };
        match chars[i + 1] {
            'u' => {
                if let Some(unit) = hex(i + 2, 4) {
                    units.push(unit as u16);
                    i += 6;
                    continue;
                }
            }
            // YAML's `\UXXXXXXXX`, JSON5's `\xXX`: one character each.
            e @ ('U' | 'x') => {
                let width = if e == 'U' { 8 } else { 2 };
                if let Some(c) = hex(i + 2, width).and_then(char::from_u32) {
                    flush(&mut units, &mut out);
                    out.push(c);
                    i += 2 + width;
                    continue;
                }
            }
            _ => {}
        }
        flush(&mut units, &mut out);
        out.push(match chars[i + 1] {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'b' => '\u{8}',
            'f' => '\u{c}',
            other => other,
        });
        i += 2;
    }
    flush(&mut units, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(text: &str) -> bool {
        scan(text, &["password"])
    }

    #[test]
    fn keys_are_found_as_lenient_readers_spell_them() {
        for text in [
            r#"// db
{"Password": "x"}"#,
            r#"{"Db":{"Password":"x",}}"#,
            "\u{feff}{\"Password\":\"x\"}",
            "{\"a\":1}\n{\"Password\":\"x\"}\n",
            r#"{"score": NaN, "Password": "x"}"#,
            r#""{\"Db\":{\"Password\":\"x\"}}""#,
            r#"{Password: 'x'}"#,
            r#"{'password' /* c */ : 'x'}"#,
            "{\"Password\" // c\n : \"x\"}",
            "db:\n  password: x\n",
            r#"{"\u0050assword": "x", }"#,
            r#"{P\u0061ssword: 'x'}"#,
            r#""\"{\\\"Password\\\":1}\"""#,
            // An apostrophe in prose, or an unclosed quote, before the key.
            "note: it's\n'password': x\n",
            "it's config: {\"Password\": \"x\"}",
            "{\"a\": \"unclosed, \"Password\": \"x\"}",
            // YAML's explicit key; a comment ended by CR alone.
            "? password\n: x\n",
            "{\"Password\" // c\r: \"x\"}",
            // Red team: an escaped colon, YAML's \U, folded letters.
            r#"'{"Password"\u003a"x"}'"#,
            r#"{"Password"\x3a "x"}"#,
            r#""\U00000070assword": x"#,
            r#"{"paſſword": "x"}"#,
        ] {
            assert!(hit(text), "{text}");
        }
    }

    #[test]
    fn look_alikes_without_the_key_are_not_hits() {
        for text in [
            "the password is wrong",
            r#"{"user": "password"}"#,
            "2026-12-08T00:00:00Z",
            "https://example.com/password",
            r#"{"passwords": 1}"#,
            r#"{"mypassword": 1}"#,
        ] {
            assert!(!hit(text), "{text}");
        }
    }

    #[test]
    fn nesting_and_escapes_are_bounded() {
        let mut text = r#"{"Password":1}"#.to_string();
        for _ in 0..MAX_DEPTH + 2 {
            text = serde_json::to_string(&text).unwrap_or_default();
        }
        // Deeper than MAX_DEPTH strings: the scan stops, it does not
        // overflow; a shallower one is found.
        let _ = hit(&text);
        let mut shallow = r#"{"Password":1}"#.to_string();
        for _ in 0..10 {
            shallow = serde_json::to_string(&shallow).unwrap_or_default();
        }
        assert!(hit(&shallow));
        assert!(!hit("\\"));
        assert!(!hit("'\\"));
        assert!(!hit("password /*"));
        // Past the lookahead or the occurrence cap: masked unexamined, in
        // linear time.
        assert!(hit(&format!("password /*{}*/: x", " ".repeat(LOOKAHEAD))));
        assert!(hit(&"password/*".repeat(100_000)));
        assert!(hit(&"password#".repeat(100_000)));
        assert!(hit(&format!(
            "\\{}u0070assword: x",
            "u005c\\".repeat(MAX_DEPTH + 2)
        )));
        assert!(!hit("password //"));
    }
}
