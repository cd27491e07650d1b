//! How the server reads the bytes an agent sends: its `client_encoding`
//! (which bytes form one character) and `standard_conforming_strings`
//! (whether a backslash in `'...'` escapes the next character). The same
//! bytes are a harmless `SELECT` under one reading and a `DROP TABLE`
//! under another, so the gateway classifies under the reading the server
//! has, learnt from the server's own ParameterStatus reports, and refuses
//! what it cannot read exactly.
//!
//! Text is converted to UTF-8 character by character, with the server's
//! own rules for where a character starts and ends (PostgreSQL's
//! `pg_*_verifychar`): a multibyte character whose trail byte is `\` or
//! `'` (SJIS, BIG5, GBK, GB18030, UHC) then stays one character, exactly
//! as the server sees it. Every ASCII byte the server's lexer sees is an
//! ASCII byte in the converted text and nothing else is, which is what
//! the parser's reading depends on. Invalid bytes are refused, never
//! replaced.

use std::borrow::Cow;

/// A client encoding the gateway reads exactly, by PostgreSQL's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEncoding {
    Utf8,
    /// No conversion: the server lexes the bytes as they are.
    SqlAscii,
    /// Multibyte encodings whose trail bytes can be ASCII: the dangerous
    /// ones (a trail byte can be `\` or `'`).
    Sjis,
    Big5,
    Gbk,
    Gb18030,
    Uhc,
    /// Multibyte encodings whose every byte of a multibyte character has
    /// the high bit set.
    EucJp,
    EucKr,
    EucCn,
    /// One byte, one character.
    Latin1,
    Single(&'static encoding_rs::Encoding),
    /// Known to PostgreSQL but not converted here (JOHAB, EUC_TW,
    /// MULE_INTERNAL, SHIFT_JIS_2004, EUC_JIS_2004, …): only pure-ASCII
    /// text is read, since every PostgreSQL encoding reads ASCII bytes as
    /// ASCII characters.
    Unsupported,
}

/// Why text could not be read as the server reads it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("invalid byte sequence for client_encoding {encoding} at byte {at}")]
    Invalid { encoding: String, at: usize },
    #[error(
        "blastgate does not read client_encoding {0}; only ASCII text is accepted in it \
         (SET client_encoding TO 'UTF8' to send other characters)"
    )]
    Unsupported(String),
}

/// The session's reading, as the server last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// `client_encoding` as reported (upper case, PostgreSQL's name).
    pub client_encoding: String,
    pub server_encoding: String,
    pub standard_conforming_strings: bool,
}

impl Default for Reading {
    /// PostgreSQL's defaults, used only until the login reports the real ones.
    fn default() -> Reading {
        Reading {
            client_encoding: "UTF8".into(),
            server_encoding: "UTF8".into(),
            standard_conforming_strings: true,
        }
    }
}

impl Reading {
    /// Applies one ParameterStatus (name, value). Returns whether the
    /// reading changed.
    pub fn report(&mut self, name: &str, value: &str) -> bool {
        let before = self.clone();
        match name {
            "client_encoding" => self.client_encoding = value.to_ascii_uppercase(),
            "server_encoding" => self.server_encoding = value.to_ascii_uppercase(),
            // The server reports "on" / "off" for this boolean.
            "standard_conforming_strings" => {
                self.standard_conforming_strings = !value.eq_ignore_ascii_case("off")
            }
            _ => {}
        }
        *self != before
    }

    /// The client bytes as the server's lexer reads them, in UTF-8.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<Cow<'a, str>, Unreadable> {
        if bytes.is_ascii() {
            // ASCII reads the same in every PostgreSQL encoding.
            return Ok(Cow::Borrowed(
                std::str::from_utf8(bytes).map_err(|e| self.invalid(e.valid_up_to()))?,
            ));
        }
        let client = encoding(&self.client_encoding);
        // A SQL_ASCII database converts nothing: its lexer sees the raw
        // bytes, which pg_query can only take as UTF-8.
        if self.server_encoding == "SQL_ASCII" || client == ClientEncoding::SqlAscii {
            return std::str::from_utf8(bytes)
                .map(Cow::Borrowed)
                .map_err(|e| self.invalid(e.valid_up_to()));
        }
        match client {
            ClientEncoding::Utf8 => std::str::from_utf8(bytes)
                .map(Cow::Borrowed)
                .map_err(|e| self.invalid(e.valid_up_to())),
            ClientEncoding::Unsupported => {
                Err(Unreadable::Unsupported(self.client_encoding.clone()))
            }
            other => convert(other, bytes)
                .map(Cow::Owned)
                .map_err(|at| self.invalid(at)),
        }
    }

    fn invalid(&self, at: usize) -> Unreadable {
        Unreadable::Invalid {
            encoding: self.client_encoding.clone(),
            at,
        }
    }
}

/// PostgreSQL's encoding names (as ParameterStatus reports them, and their
/// aliases as `SET client_encoding` accepts them, normalised by the server
/// before it reports them).
pub fn encoding(name: &str) -> ClientEncoding {
    use encoding_rs as e;
    let upper = name.to_ascii_uppercase().replace(['-', '_'], "");
    match upper.as_str() {
        "UTF8" | "UNICODE" => ClientEncoding::Utf8,
        "SQLASCII" => ClientEncoding::SqlAscii,
        "SJIS" | "SHIFTJIS" | "MSKANJI" | "WIN932" | "WINDOWS932" => ClientEncoding::Sjis,
        "BIG5" | "WIN950" | "WINDOWS950" => ClientEncoding::Big5,
        "GBK" | "WIN936" | "WINDOWS936" => ClientEncoding::Gbk,
        "GB18030" => ClientEncoding::Gb18030,
        "UHC" | "WIN949" | "WINDOWS949" => ClientEncoding::Uhc,
        "EUCJP" => ClientEncoding::EucJp,
        "EUCKR" => ClientEncoding::EucKr,
        "EUCCN" => ClientEncoding::EucCn,
        "LATIN1" | "ISO88591" => ClientEncoding::Latin1,
        "LATIN2" | "ISO88592" => ClientEncoding::Single(e::ISO_8859_2),
        "LATIN3" | "ISO88593" => ClientEncoding::Single(e::ISO_8859_3),
        "LATIN4" | "ISO88594" => ClientEncoding::Single(e::ISO_8859_4),
        "LATIN6" | "ISO885910" => ClientEncoding::Single(e::ISO_8859_10),
        "LATIN7" | "ISO885913" => ClientEncoding::Single(e::ISO_8859_13),
        "LATIN8" | "ISO885914" => ClientEncoding::Single(e::ISO_8859_14),
        "LATIN9" | "ISO885915" => ClientEncoding::Single(e::ISO_8859_15),
        "LATIN10" | "ISO885916" => ClientEncoding::Single(e::ISO_8859_16),
        "ISO88595" => ClientEncoding::Single(e::ISO_8859_5),
        "ISO88596" => ClientEncoding::Single(e::ISO_8859_6),
        "ISO88597" => ClientEncoding::Single(e::ISO_8859_7),
        "ISO88598" => ClientEncoding::Single(e::ISO_8859_8),
        "WIN866" | "ALT" => ClientEncoding::Single(e::IBM866),
        "WIN874" => ClientEncoding::Single(e::WINDOWS_874),
        "WIN1250" => ClientEncoding::Single(e::WINDOWS_1250),
        "WIN1251" | "WIN" => ClientEncoding::Single(e::WINDOWS_1251),
        "WIN1252" => ClientEncoding::Single(e::WINDOWS_1252),
        "WIN1253" => ClientEncoding::Single(e::WINDOWS_1253),
        "WIN1254" => ClientEncoding::Single(e::WINDOWS_1254),
        "WIN1255" => ClientEncoding::Single(e::WINDOWS_1255),
        "WIN1256" => ClientEncoding::Single(e::WINDOWS_1256),
        "WIN1257" => ClientEncoding::Single(e::WINDOWS_1257),
        "WIN1258" | "ABC" | "TCVN" | "TCVN5712" | "VSCII" => {
            ClientEncoding::Single(e::WINDOWS_1258)
        }
        "KOI8R" | "KOI8" => ClientEncoding::Single(e::KOI8_R),
        "KOI8U" => ClientEncoding::Single(e::KOI8_U),
        _ => ClientEncoding::Unsupported,
    }
}

/// Length of the character at the head of `s` as PostgreSQL verifies it,
/// or `None` where the server would report an invalid byte sequence.
fn char_len(enc: ClientEncoding, s: &[u8]) -> Option<usize> {
    let c = *s.first()?;
    if c < 0x80 {
        return Some(1);
    }
    let at = |i: usize| s.get(i).copied();
    let within = |b: Option<u8>, lo: u8, hi: u8| b.is_some_and(|b| (lo..=hi).contains(&b));
    match enc {
        // pg_sjis_verifychar: half-width katakana are one byte; any other
        // high byte leads two, head 81-9F/E0-FC, trail 40-7E/80-FC.
        ClientEncoding::Sjis => {
            if (0xa1..=0xdf).contains(&c) {
                return Some(1);
            }
            let head = (0x81..=0x9f).contains(&c) || (0xe0..=0xfc).contains(&c);
            let t = at(1);
            (head && (within(t, 0x40, 0x7e) || within(t, 0x80, 0xfc))).then_some(2)
        }
        // pg_big5/gbk/uhc_verifychar: any high byte leads two, any non-NUL
        // trail (the conversion then refuses unmapped pairs).
        ClientEncoding::Big5 | ClientEncoding::Gbk | ClientEncoding::Uhc => {
            at(1).is_some_and(|t| t != 0).then_some(2)
        }
        // pg_gb18030_verifychar.
        ClientEncoding::Gb18030 => {
            let second = at(1)?;
            if (0x30..=0x39).contains(&second) {
                let ok = (0x81..=0xfe).contains(&c)
                    && within(at(2), 0x81, 0xfe)
                    && within(at(3), 0x30, 0x39);
                ok.then_some(4)
            } else if (0x81..=0xfe).contains(&c)
                && ((0x40..=0x7e).contains(&second) || (0x80..=0xfe).contains(&second))
            {
                Some(2)
            } else {
                None
            }
        }
        // EUC: SS2 (8E) + one, SS3 (8F) + two, else two; every byte high.
        ClientEncoding::EucJp | ClientEncoding::EucKr | ClientEncoding::EucCn => {
            let len = match c {
                0x8e if enc == ClientEncoding::EucJp => 2,
                0x8f if enc == ClientEncoding::EucJp => 3,
                _ => 2,
            };
            let all_high = (1..len).all(|i| within(at(i), 0xa1, 0xfe));
            let lead_ok = c == 0x8e || c == 0x8f || (0xa1..=0xfe).contains(&c);
            (lead_ok && all_high).then_some(len)
        }
        ClientEncoding::Latin1 | ClientEncoding::Single(_) => Some(1),
        ClientEncoding::Utf8 | ClientEncoding::SqlAscii | ClientEncoding::Unsupported => None,
    }
}

/// The encoding_rs decoder for one character of a multibyte encoding.
fn decoder(enc: ClientEncoding) -> Option<&'static encoding_rs::Encoding> {
    Some(match enc {
        ClientEncoding::Sjis => encoding_rs::SHIFT_JIS,
        ClientEncoding::Big5 => encoding_rs::BIG5,
        ClientEncoding::Gbk | ClientEncoding::EucCn => encoding_rs::GBK,
        ClientEncoding::Gb18030 => encoding_rs::GB18030,
        ClientEncoding::Uhc | ClientEncoding::EucKr => encoding_rs::EUC_KR,
        ClientEncoding::EucJp => encoding_rs::EUC_JP,
        ClientEncoding::Single(e) => e,
        _ => return None,
    })
}

/// Converts `bytes` to UTF-8 one server-delimited character at a time.
/// Each non-ASCII character must convert to exactly one non-ASCII
/// character; anything else is refused at its offset.
fn convert(enc: ClientEncoding, bytes: &[u8]) -> Result<String, usize> {
    let mut out = String::with_capacity(bytes.len() * 2);
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let len = char_len(enc, rest).ok_or(at)?;
        let ch = rest.get(..len).ok_or(at)?;
        if len == 1 && ch[0] < 0x80 {
            out.push(ch[0] as char);
        } else if enc == ClientEncoding::Latin1 {
            out.push(char::from(ch[0]));
        } else {
            let dec = decoder(enc).ok_or(at)?;
            let text = dec
                .decode_without_bom_handling_and_without_replacement(ch)
                .ok_or(at)?;
            let mut chars = text.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if !c.is_ascii() => out.push(c),
                _ => return Err(at),
            }
        }
        at += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(client: &str) -> Reading {
        Reading {
            client_encoding: client.into(),
            ..Reading::default()
        }
    }

    #[test]
    fn a_multibyte_character_keeps_its_backslash_trail_byte() {
        // 0x95 0x5C is one SJIS character (U+8868); read lossily as UTF-8
        // the 0x5C would be a backslash escaping the closing quote.
        let sql = b"SELECT E'\x95\\'; DROP TABLE orders; --'";
        let text = reading("SJIS").decode(sql).expect("valid SJIS");
        assert_eq!(text, "SELECT E'\u{8868}'; DROP TABLE orders; --'");
        for (enc, bytes) in [
            ("BIG5", &b"SELECT '\xa5\\'"[..]),
            ("GBK", &b"SELECT '\x81\\'"[..]),
            ("GB18030", &b"SELECT '\x81\\'"[..]),
        ] {
            let text = reading(enc)
                .decode(bytes)
                .unwrap_or_else(|e| panic!("{enc}: {e}"));
            assert_eq!(text.matches('\\').count(), 0, "{enc}: {text}");
            assert!(text.ends_with('\''), "{enc}: {text}");
        }
    }

    #[test]
    fn invalid_bytes_are_refused_never_replaced() {
        // UHC has no trail byte 0x5C: the server refuses the pair, and so
        // does the gateway.
        assert!(reading("UHC").decode(b"SELECT '\x81\\'").is_err());
        assert!(matches!(
            reading("UTF8").decode(b"SELECT '\xff'"),
            Err(Unreadable::Invalid { at: 8, .. })
        ));
        // A lone SJIS lead byte at the end, and a lead with a NUL trail.
        assert!(reading("SJIS").decode(b"SELECT '\x95").is_err());
        assert!(reading("BIG5").decode(b"SELECT '\xa5\0'").is_err());
        // 0x80 is no SJIS lead byte for the server.
        assert!(reading("SJIS").decode(b"SELECT '\x80\\'").is_err());
    }

    #[test]
    fn unsupported_encodings_read_only_ascii() {
        let r = reading("JOHAB");
        assert_eq!(r.decode(b"SELECT 1").as_deref(), Ok("SELECT 1"));
        assert!(matches!(
            r.decode(b"SELECT '\x88\\'"),
            Err(Unreadable::Unsupported(_))
        ));
    }

    #[test]
    fn sql_ascii_databases_see_raw_bytes() {
        let r = Reading {
            client_encoding: "SJIS".into(),
            server_encoding: "SQL_ASCII".into(),
            standard_conforming_strings: true,
        };
        // No conversion happens: the raw bytes must already be UTF-8.
        assert!(r.decode(b"SELECT E'\x95\\'").is_err());
        assert_eq!(
            r.decode("SELECT 'é'".as_bytes()).as_deref(),
            Ok("SELECT 'é'")
        );
    }

    #[test]
    fn reports_change_the_reading() {
        let mut r = Reading::default();
        assert!(r.report("standard_conforming_strings", "off"));
        assert!(!r.standard_conforming_strings);
        assert!(!r.report("standard_conforming_strings", "off"));
        assert!(r.report("client_encoding", "sjis"));
        assert_eq!(encoding(&r.client_encoding), ClientEncoding::Sjis);
        assert!(!r.report("application_name", "x"));
    }

    #[test]
    fn single_byte_encodings_keep_ascii_as_ascii() {
        let text = reading("LATIN1")
            .decode(b"SELECT '\xe9\\'")
            .expect("latin1");
        assert_eq!(text, "SELECT '\u{e9}\\'");
        let text = reading("WIN1251")
            .decode(b"SELECT '\xc0'")
            .expect("win1251");
        assert_eq!(text, "SELECT '\u{410}'");
    }
}
