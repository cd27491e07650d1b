//! Bounded body excerpts for the records (`[targets.http]
//! record_body_bytes`, off by default): the first bytes of each request
//! body and of each response as the agent got it, masked by the session's
//! rules, recorded as replay (`io`) events right after the request's own
//! event, so `blastgate sessions export` shows what was asked and answered.
//! Bodies are never held for this: the excerpt is copied as bytes pass.

use std::{
    borrow::Cow,
    sync::{Arc, Mutex},
};

use http_body_util::BodyExt;

use super::upstream::Body;
use crate::{
    policy::masking::MaskPlan,
    records::{Event, IoChunk, IoStream},
    session::Session,
};

/// Largest excerpt a target may ask for: records are not a body store.
pub const MAX_EXCERPT_BYTES: usize = 64 * 1024;

/// The first `cap` bytes seen of one body.
#[derive(Clone)]
pub struct Kept {
    bytes: Arc<Mutex<Vec<u8>>>,
    seen: Arc<std::sync::atomic::AtomicU64>,
    cap: usize,
}

impl Kept {
    pub fn new(cap: usize) -> Kept {
        Kept {
            bytes: Arc::default(),
            seen: Arc::default(),
            cap,
        }
    }

    pub fn add(&self, data: &[u8]) {
        self.seen
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut b) = self.bytes.lock() {
            let room = self.cap.saturating_sub(b.len());
            b.extend_from_slice(&data[..room.min(data.len())]);
        }
    }

    /// The excerpt as replay data, masked; None for an empty body.
    pub fn chunk(&self, stream: IoStream, at_us: u64, plan: Option<&MaskPlan>) -> Option<IoChunk> {
        let bytes = self.bytes.lock().ok()?.clone();
        if bytes.is_empty() {
            return None;
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let mut data = match plan {
            Some(p) => {
                let masked = p.mask_json_bytes(text.as_bytes()).map(|m| match m.body {
                    Cow::Owned(masked) => Some(String::from_utf8_lossy(&masked).into_owned()),
                    Cow::Borrowed(_) => None,
                });
                match masked {
                    Ok(Some(masked)) => masked,
                    Ok(None) => text,
                    Err(_) => p.scan(&text).0,
                }
            }
            None => text,
        };
        let seen = self.seen.load(std::sync::atomic::Ordering::Relaxed);
        if seen > bytes.len() as u64 {
            data += &format!(
                "\n[blastgate: {} more bytes not recorded]",
                seen - bytes.len() as u64
            );
        }
        Some(IoChunk {
            stream,
            offset_us: at_us,
            data,
        })
    }
}

/// The excerpts of one request and its response.
pub struct Pair {
    pub request: Kept,
    pub response: Kept,
    pub plan: Option<MaskPlan>,
}

impl Pair {
    pub fn new(cap: usize, plan: Option<MaskPlan>) -> Pair {
        Pair {
            request: Kept::new(cap),
            response: Kept::new(cap),
            plan,
        }
    }

    /// The replay events: what the agent sent, then what it got.
    pub fn events(&self, session: &Session) -> Vec<Event> {
        let at = session.elapsed_us();
        [
            self.request.chunk(IoStream::Input, at, self.plan.as_ref()),
            self.response
                .chunk(IoStream::Output, at, self.plan.as_ref()),
        ]
        .into_iter()
        .flatten()
        .map(|c| session.io(c))
        .collect()
    }
}

/// A request body on its way upstream, its first bytes kept.
pub fn tee(body: Body, kept: Kept) -> Body {
    body.map_frame(move |frame| {
        if let Some(d) = frame.data_ref() {
            kept.add(d);
        }
        frame
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_bytes_and_says_how_many_more() {
        let k = Kept::new(5);
        k.add(b"hello ");
        k.add(b"world");
        let c = k.chunk(IoStream::Output, 7, None).unwrap();
        assert_eq!(c.data, "hello\n[blastgate: 6 more bytes not recorded]");
        assert_eq!(c.offset_us, 7);
        assert!(Kept::new(5).chunk(IoStream::Input, 0, None).is_none());
    }
}
