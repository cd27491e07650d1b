//! PostgreSQL framing (`protocols::postgres::frame`) and the message
//! readers (`messages`, `mask`, `upstream::error_text`): a byte stream
//! from either side, cut into messages and each read as the relay reads
//! it. From the agent, optionally the startup phase first, through the
//! real negotiation (`agent::open`: SSLRequest and GSSENCRequest declined,
//! then a StartupMessage or a CancelRequest).
//!
//! Input: `[flags, bytes…]`; `flags & 1`: from the server (else the
//! agent); `flags & 2`: the agent's startup packets come first.
#![no_main]

#[path = "common.rs"]
mod common;

use blastgate::protocols::postgres::{
    agent::{self, Opening},
    frame::{decode, Frame, PgError, Reader},
    mask, messages,
    reading::Reading,
    upstream,
};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The default `max_message_bytes`, scaled to fuzzer inputs: small enough
/// that the limit is reached.
const MAX: usize = 4096;

fuzz_target!(init: common::init(), |data: &[u8]| {
    common::run(|| one(data))
});

fn one(data: &[u8]) {
    let [flags, stream @ ..] = data else {
        return;
    };
    let server = flags & 1 != 0;
    let startup = flags & 2 != 0 && !server;
    common::runtime().block_on(async {
        if startup {
            opening(stream).await;
        } else {
            frames(stream, server).await;
        }
    });
}

/// The startup phase, then the agent's messages after it.
async fn opening(stream: &[u8]) {
    let (mut peer, io) = tokio::io::duplex(1 << 20);
    let _ = peer.write_all(stream).await;
    let _ = peer.shutdown().await;
    match agent::open(io, None).await {
        Ok(Opening::Session {
            io,
            params,
            minor_version,
            tls,
        }) => {
            assert!(!tls, "no TLS was offered");
            assert!(
                params.iter().all(|(k, _)| !k.is_empty()),
                "empty parameter name"
            );
            let _ = minor_version;
            let mut rest = Vec::new();
            let mut io = io;
            let _ = io.read_to_end(&mut rest).await;
            frames(&rest, false).await;
        }
        Ok(Opening::Cancel { secret, .. }) => {
            assert!(
                secret.len() <= 10_000,
                "cancel key of {} bytes",
                secret.len()
            );
        }
        Err(_) => {}
    }
}

async fn frames(stream: &[u8], server: bool) {
    let mut reader = Reader::new(stream, MAX);
    loop {
        let frame = match reader.next().await {
            Ok(f) => f,
            Err(PgError::TooLarge { len, max }) => {
                assert!(len > max);
                return;
            }
            Err(_) => return,
        };
        let declared = i32::from_be_bytes([
            frame.bytes[1],
            frame.bytes[2],
            frame.bytes[3],
            frame.bytes[4],
        ]);
        assert_eq!(
            frame.bytes.len(),
            declared as usize + 1,
            "a frame is its declared length"
        );
        assert!(frame.bytes.len() <= MAX);
        assert_eq!(frame.tag, frame.bytes[0]);
        if server {
            backend(&frame);
        } else {
            frontend(&frame);
        }
    }
}

fn frontend(frame: &Frame) {
    let read = |raw: &[u8]| {
        for enc in ["UTF8", "SJIS", "GB18030", "LATIN1", "EUC_JP"] {
            let mut r = Reading::default();
            r.report("client_encoding", enc);
            let _ = r.decode(raw);
        }
    };
    match frame.tag {
        b'Q' => {
            if let Ok(q) = messages::query(frame) {
                assert!(!q.contains(&0));
                read(q);
            }
            let _ = decode::<pgwire::messages::simplequery::Query>(frame, "Query");
        }
        b'P' => {
            if let Ok((name, q)) = messages::parse(frame) {
                assert!(!name.contains(&0) && !q.contains(&0));
                read(q);
            }
            let _ = decode::<pgwire::messages::extendedquery::Parse>(frame, "Parse");
        }
        b'B' => {
            if let Ok(b) = messages::bind(frame) {
                assert!(!b.portal.contains(&0) && !b.statement.contains(&0));
            }
            let _ = decode::<pgwire::messages::extendedquery::Bind>(frame, "Bind");
        }
        b'D' | b'C' => {
            if let Ok((kind, _)) = messages::target(frame, "Describe") {
                assert!(kind == b'S' || kind == b'P');
            }
        }
        b'E' => {
            let _ = messages::execute(frame);
        }
        b'p' => {
            let _ = decode::<pgwire::messages::startup::Password>(frame, "PasswordMessage");
        }
        _ => {}
    }
}

fn backend(frame: &Frame) {
    match frame.tag {
        b'S' => {
            if let Ok((name, value)) = messages::parameter_status(frame) {
                let mut r = Reading::default();
                r.report(&name, &value);
            }
        }
        b'D' => {
            if let Ok(values) = mask::row_values(frame) {
                let mut out = bytes::BytesMut::new();
                mask::write_row(values.iter().copied(), &mut out);
                // A row read and written again is the same row, when it
                // was not padded.
                let again = Frame {
                    tag: b'D',
                    bytes: out,
                };
                assert_eq!(mask::row_values(&again).ok(), Some(values));
            }
        }
        b'T' => {
            let _ = mask::fields(frame);
        }
        b'E' | b'N' => {
            let _ = upstream::error_text(frame);
        }
        b'V' => {
            let _ = mask::function_result(frame);
        }
        _ => {}
    }
}
