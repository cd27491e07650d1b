//! The SQL classifier (`protocols::postgres::classify`) behind the
//! session's reading (`reading.rs`): bytes in one of several client
//! encodings, with and without `standard_conforming_strings`.
//!
//! Input: `[flags, split_lo, split_hi, bytes…]`. `flags & 0x0f` picks the
//! client encoding, `flags & 0x10` turns `standard_conforming_strings`
//! off, `flags & 0x20` makes the server SQL_ASCII. The bytes are two query
//! strings (split at `split`): the first warms a fresh classifier's cache,
//! the second must then read exactly as without a cache — a cache that
//! hands one string another's classification decides the wrong
//! statement. The same text is also the message of a refusal: the
//! statement blastgate has the server run to raise it must be one DO
//! block whose body only raises, whatever the message spells.
#![no_main]

#[path = "common.rs"]
mod common;

use blastgate::protocols::postgres::{
    classify::{classify_as, Classifier, Lexing, ACTION_OPAQUE, COMMAND_UNPARSABLE},
    gate,
    reading::Reading,
};
use libfuzzer_sys::fuzz_target;

const ENCODINGS: [&str; 16] = [
    "UTF8",
    "SQL_ASCII",
    "SJIS",
    "BIG5",
    "GBK",
    "GB18030",
    "UHC",
    "EUC_JP",
    "EUC_KR",
    "EUC_CN",
    "LATIN1",
    "WIN1252",
    "KOI8R",
    "WIN1251",
    "JOHAB",
    "LATIN9",
];

fuzz_target!(init: common::init(), |data: &[u8]| {
    common::run(|| one(data))
});

fn one(data: &[u8]) {
    let [flags, lo, hi, rest @ ..] = data else {
        return;
    };
    let split = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
    let (first, second) = rest.split_at(split);
    let mut reading = Reading::default();
    reading.report("client_encoding", ENCODINGS[usize::from(flags & 0x0f)]);
    if flags & 0x10 != 0 {
        reading.report("standard_conforming_strings", "off");
    }
    if flags & 0x20 != 0 {
        reading.report("server_encoding", "SQL_ASCII");
    }
    let lexing = Lexing {
        standard_conforming_strings: reading.standard_conforming_strings,
    };
    let cached = Classifier::new(16);
    for raw in [first, second] {
        // Text that cannot be read exactly is refused by the relay before
        // it is classified.
        let Ok(text) = reading.decode(raw) else {
            continue;
        };
        if raw.is_ascii() {
            assert_eq!(text.as_bytes(), raw, "ASCII reads as itself");
        }
        let direct = classify_as(&text, lexing);
        for st in &direct {
            if st.command == COMMAND_UNPARSABLE {
                assert_eq!(st.action, ACTION_OPAQUE, "what does not parse is opaque");
            }
            assert!(st.action.starts_with("sql:"));
        }
        let through_cache = cached.classify_as(&text, lexing);
        assert_eq!(
            *through_cache, direct,
            "the cache answered {text:?} with another string's classification"
        );
    }
    if let Ok(text) = std::str::from_utf8(second) {
        raises_only(&gate::raise(text, flags & 0x40 != 0));
    }
}

/// `sql` is one DO block whose PL/pgSQL body is one RAISE.
fn raises_only(sql: &str) {
    let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        // NUL and other bytes the server refuses whole: nothing runs.
        return;
    };
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        panic!(
            "the refusal is {} statements: {sql:?}",
            parsed.protobuf.stmts.len()
        );
    };
    let Some(pg_query::NodeEnum::DoStmt(d)) = raw.stmt.as_ref().and_then(|s| s.node.as_ref())
    else {
        panic!("the refusal is not a DO block: {sql:?}");
    };
    let body = d.args.iter().find_map(|a| match a.node.as_ref()? {
        pg_query::NodeEnum::DefElem(e) if e.defname == "as" => {
            match e.arg.as_ref()?.node.as_ref()? {
                pg_query::NodeEnum::String(s) => Some(s.sval.clone()),
                _ => None,
            }
        }
        _ => None,
    });
    let Some(body) = body else {
        panic!("the refusal's DO block has no body: {sql:?}");
    };
    let function = format!(
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS '{}'",
        body.replace('\'', "''")
    );
    let Ok(tree) = pg_query::parse_plpgsql(&function) else {
        panic!("the refusal's body does not parse: {sql:?}");
    };
    let statements = tree[0]["PLpgSQL_function"]["action"]["PLpgSQL_stmt_block"]["body"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_object()?.keys().next().cloned())
                // The parser ends every body with an implicit RETURN.
                .filter(|kind| kind != "PLpgSQL_stmt_return")
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert_eq!(
        statements,
        ["PLpgSQL_stmt_raise"],
        "the refusal runs more than a RAISE: {sql:?}"
    );
}
