//! The sftp observer (`protocols::ssh::sftp::SftpObserver`): copies of
//! both directions of a channel, in any interleaving and any chunking.
//!
//! Input: records `[kind, len_lo, len_hi, bytes…]`; an even kind is the
//! client's bytes, an odd one the server's. The channel is then closed.
//! The records must not depend on the chunking (the relay's reads cut the
//! stream anywhere): the same bytes fed one at a time give the same ones.
#![no_main]

#[path = "common.rs"]
mod common;

use blastgate::protocols::ssh::sftp::{SftpObserver, SftpRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: common::init(), |data: &[u8]| {
    common::run(|| one(data))
});

fn one(data: &[u8]) {
    let chunks = common::records(data);
    let whole = observe(chunks.iter().map(|(k, b)| (*k, *b)));
    let bytewise = observe(
        chunks
            .iter()
            .flat_map(|(k, b)| b.chunks(1).map(move |one| (*k, one))),
    );
    assert_eq!(
        whole, bytewise,
        "the records depend on how the stream was cut"
    );
    // Every record stands for a request of at least five bytes (length
    // and type), the handle ones for two (open, then the close's totals),
    // plus one give-up report.
    let client: usize = chunks
        .iter()
        .filter(|(k, _)| k & 1 == 0)
        .map(|(_, b)| b.len())
        .sum();
    assert!(
        whole.len() <= 2 * (client / 5) + 1,
        "{} records from {client} client bytes",
        whole.len()
    );
}

fn observe<'a>(chunks: impl Iterator<Item = (u8, &'a [u8])>) -> Vec<SftpRecord> {
    let mut observer = SftpObserver::new();
    let mut out = Vec::new();
    for (kind, bytes) in chunks {
        if kind & 1 == 0 {
            observer.from_client(bytes);
        } else {
            out.extend(observer.from_server(bytes));
        }
    }
    out.extend(observer.finish());
    // Closed is closed.
    assert!(observer.finish().is_empty());
    assert!(observer.from_server(b"\0\0\0\x05\x65\0\0\0\x01").is_empty());
    out
}
