//! What every target shares: the panic hook and a runtime for the async
//! parsers.
//!
//! libfuzzer-sys's own hook aborts on every panic, caught or not; blastgate
//! catches panics from pg_query and pgwire on purpose (malformed input
//! becomes a refusal), so those must not count as crashes. This hook keeps
//! the last panic's message and place; a panic that escapes the target is
//! printed and aborts, as a crash.

#![allow(dead_code)]

use std::{cell::RefCell, panic::AssertUnwindSafe, sync::OnceLock};

thread_local! {
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Installs the hook; call from the target's `init`.
pub fn init() {
    std::panic::set_hook(Box::new(|info| {
        let text = info.to_string();
        LAST_PANIC.with(|p| *p.borrow_mut() = text);
    }));
}

/// Runs one input; a panic escaping it is a crash.
pub fn run(body: impl FnOnce()) {
    if std::panic::catch_unwind(AssertUnwindSafe(body)).is_err() {
        LAST_PANIC.with(|p| eprintln!("panic escaped the target: {}", p.borrow()));
        std::process::abort();
    }
}

/// One current-thread runtime for the whole run: a runtime per input
/// would cost more than most inputs.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
    })
}

/// Splits `data` into records `[kind, len_lo, len_hi, bytes…]`: how the
/// stream targets interleave their two directions. A short tail is one
/// last record of kind 0.
pub fn records(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 3 {
            out.push((0, data));
            break;
        }
        let kind = data[0];
        let len = usize::from(u16::from_le_bytes([data[1], data[2]]));
        let rest = &data[3..];
        let n = len.min(rest.len());
        out.push((kind, &rest[..n]));
        data = &rest[n..];
    }
    out
}
