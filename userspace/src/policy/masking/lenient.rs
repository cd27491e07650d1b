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
//! a document it masked as one is scanned for keys the way they all spell
//! them (quoted either way or bare, with escapes, before a `:` after
//! blanks and comments, at any depth of strings inside strings), and if
//! one is the name a path rule ends on (any case), the whole string is
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
        if !text.contains(':') {
            return false;
        }
        let names: Vec<String> = self
            .fields
            .iter()
            .flat_map(|f| f.json_paths.iter())
            .filter_map(|path| last_name(path))
            .map(str::to_lowercase)
            .collect();
        !names.is_empty() && scan(text, &names, 0)
    }
}

/// The last key a path names (the value under it is what it masks).
fn last_name(path: &[Step]) -> Option<&str> {
    path.iter().rev().find_map(|s| match s {
        Step::Key(k) | Step::Descend(k) => Some(k.as_str()),
        Step::Index(_) | Step::AnyIndex => None,
    })
}

#[derive(Debug, PartialEq)]
enum Token {
    /// A quoted string's content, escapes decoded.
    Quoted(String),
    /// A bare word (a JSON5 identifier or a YAML plain key), escapes
    /// decoded.
    Bare(String),
    Colon,
    Other,
}

fn scan(text: &str, names: &[String], depth: usize) -> bool {
    let tokens = tokens(text);
    for (i, t) in tokens.iter().enumerate() {
        let (Token::Quoted(word) | Token::Bare(word)) = t else {
            continue;
        };
        if tokens.get(i + 1) == Some(&Token::Colon) && names.contains(&word.to_lowercase()) {
            return true;
        }
        if matches!(t, Token::Quoted(_))
            && depth < MAX_DEPTH
            && word.contains(':')
            && scan(word, names, depth + 1)
        {
            return true;
        }
    }
    false
}

/// The text as a lenient reader tokenizes it: blanks (a byte-order mark
/// among them) and comments (`//`, `/* */`, `#`) dropped.
fn tokens(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() || c == '\u{feff}' {
            i += 1;
        } else if c == '/' && next == Some('/') || c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if c == '"' || c == '\'' {
            let (word, end) = quoted(&chars, i + 1, c);
            out.push(Token::Quoted(word));
            i = end;
        } else if c == ':' {
            out.push(Token::Colon);
            i += 1;
        } else if is_word(c) {
            let start = i;
            while i < chars.len() && is_word(chars[i]) {
                i += 1;
            }
            out.push(Token::Bare(unescape(&chars[start..i])));
        } else {
            out.push(Token::Other);
            i += 1;
        }
    }
    out
}

/// A bare key's characters: JSON5 identifiers (escapes included) and
/// YAML plain keys (dashes and dots too).
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '$' | '\\' | '-' | '.')
}

/// A quoted string from `start` (after the opening `quote`) to its end:
/// its content with escapes decoded, and the index after the closing quote
/// (or the end of the text: an unclosed string runs on).
fn quoted(chars: &[char], start: usize, quote: char) -> (String, usize) {
    let mut i = start;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    let end = i.min(chars.len());
    (unescape(&chars[start..end]), (i + 1).min(chars.len()))
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
            'x' => {
                if let Some(c) = hex(i + 2, 2).and_then(char::from_u32) {
                    flush(&mut units, &mut out);
                    out.push(c);
                    i += 4;
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
        scan(text, &["password".to_string()], 0)
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
        assert!(!hit("/*"));
    }
}
