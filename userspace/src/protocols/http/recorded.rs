//! The response body on its way to the agent, and the request's record
//! written when that body ends: bytes, duration, what masking found, and
//! the body excerpts when the target keeps them.

use std::{
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::{excerpt, lines, request::Conn, upstream::Body};
use crate::{protocols::gateway::Gateway, records::Event};

/// A response body that records `event` when it ends or the agent goes.
pub fn recorded(
    conn: &Conn,
    body: Body,
    event: Event,
    tally: Arc<lines::Tally>,
    excerpts: Option<excerpt::Pair>,
    started: Instant,
) -> Body {
    Recorded {
        inner: body,
        bytes: 0,
        event: Some(event),
        tally,
        excerpts,
        gw: conn.gw.clone(),
        started,
    }
    .boxed()
}

/// The response body on its way to the agent: counted, and recorded when
/// it ends or the agent goes away (the event is written from a task of the
/// session, as Drop cannot wait; the session closes only after it).
struct Recorded {
    inner: Body,
    bytes: u64,
    event: Option<Event>,
    /// What masking found, for streams known only at their end.
    tally: Arc<lines::Tally>,
    /// Body excerpts for the records, when the target asks for them.
    excerpts: Option<excerpt::Pair>,
    gw: Gateway,
    started: Instant,
}

impl HttpBody for Recorded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(d) = frame.data_ref() {
                self.bytes += d.len() as u64;
                if let Some(pair) = &self.excerpts {
                    pair.response.add(d);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        let Some(mut event) = self.event.take() else {
            return;
        };
        event.bytes_to_agent = Some(self.bytes);
        let fields = self.tally.fields.load(Ordering::Relaxed);
        if fields > 0 {
            event.masked_fields = Some(fields);
            self.gw.masked(fields);
        }
        let echoes = self.tally.credential_echoes.load(Ordering::Relaxed);
        if echoes > 0 {
            crate::metrics::get().credential_echoes.inc_by(echoes);
            let what = format!(
                "the upstream echoed the injected credential: {echoes} occurrence(s) blanked before the agent"
            );
            event.reason = Some(match event.reason.take() {
                Some(r) if !r.is_empty() => format!("{r}; {what}"),
                _ => what,
            });
        }
        if let Some(note) = self.tally.note.lock().ok().and_then(|mut n| n.take()) {
            event.reason = Some(match event.reason.take() {
                Some(r) if !r.is_empty() => format!("{r}; {note}"),
                _ => note,
            });
        }
        event.duration_us = Some(self.started.elapsed().as_micros() as u64);
        self.gw.counters.add_to_agent(self.bytes);
        let gw = self.gw.clone();
        let excerpts = self
            .excerpts
            .as_ref()
            .map(|p| p.events(&gw.session))
            .unwrap_or_default();
        self.gw.tasks.spawn(async move {
            gw.record(event).await;
            for e in excerpts {
                gw.record(e).await;
            }
        });
    }
}
