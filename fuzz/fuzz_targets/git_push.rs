//! The git push reader (`protocols::git`): the command section and PACK
//! of a receive-pack stream, and the splicing of refusals into the
//! server's report, at any chunking.
//!
//! Input: the first byte picks the chunk size (1..=256) the rest is fed
//! in. Whatever the bytes, nothing panics, and the chunked reading gives
//! the same answer as the whole one (the relays cut streams anywhere).
#![no_main]

#[path = "common.rs"]
mod common;

use blastgate::protocols::git::{
    pack::Limits,
    push::{ancestry, ReportSplice},
    Incoming,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: common::init(), |data: &[u8]| {
    common::run(|| one(data))
});

fn limits() -> Limits {
    Limits {
        max_pack: 32 << 10,
        max_kept: 1 << 20,
    }
}

fn one(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = usize::from(k) + 1;
    let whole = Incoming::new(limits()).push(rest, true);
    let mut chunked = Incoming::new(limits());
    let mut got = Ok(None);
    for piece in rest.chunks(k) {
        got = chunked.push(piece, false);
        if !matches!(got, Ok(None)) {
            break;
        }
    }
    if matches!(got, Ok(None)) {
        got = chunked.push(&[], true);
    }
    // Over a limit, where the scan stops depends on the chunking: only
    // the ids and parents of whole reads must agree.
    match (&whole, &got) {
        (Ok(Some(a)), Ok(Some(b))) => {
            assert_eq!(a.head, b.head, "the commands depend on the chunking");
            if a.pack_note.is_none() && b.pack_note.is_none() {
                assert_eq!(a.commits, b.commits, "the commits depend on the chunking");
            }
            for u in &a.head.updates {
                let (Some(old), Some(new)) = (
                    blastgate::protocols::git::pack::parse_hex(u.old.as_bytes()),
                    blastgate::protocols::git::pack::parse_hex(u.new.as_bytes()),
                ) else {
                    continue;
                };
                let _ = ancestry(&old, &new, a.commits.as_ref());
            }
        }
        (Err(_), Err(_)) | (Ok(None), Ok(None)) => {}
        (Ok(Some(a)), _) if a.pack_note.is_some() => {}
        (_, Ok(Some(b))) if b.pack_note.is_some() => {}
        (a, b) => panic!("whole {a:?} but chunked {b:?}"),
    }
    // The server's side: the same bytes out, however cut.
    let refused = vec![("refs/heads/main".to_string(), "refused".to_string())];
    let splice = |cut: usize| {
        let mut s = ReportSplice::default();
        s.refuse(refused.clone(), k & 1 == 1);
        let mut out = Vec::new();
        for piece in rest.chunks(cut) {
            match s.feed(piece) {
                Ok(b) => out.extend(b),
                Err(_) => return None,
            }
        }
        Some(out)
    };
    if let (Some(a), Some(b)) = (splice(rest.len().max(1)), splice(k)) {
        assert_eq!(a, b, "the report depends on the chunking");
    }
}
