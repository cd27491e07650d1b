//! Bidirectional byte relay with counters that survive errors.
//!
//! `tokio::io::copy_bidirectional` loses its byte counts when either side
//! errors, and an audit record needs them most in exactly that case.
//!
//! Each direction starts as a plain read/write copy through a small,
//! never-zeroed buffer (short request/response connections pay for nothing
//! more), and switches to `splice(2)` through a pipe once it has carried
//! [`SPLICE_AFTER`] bytes, so bulk transfers move pages inside the kernel
//! instead of being copied through userspace twice.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::{io::Interest, net::TcpStream};

use crate::session::{Counters, SessionError};

const COPY_BUF: usize = 32 * 1024;
/// Bytes one direction carries before it is worth setting up a pipe.
const SPLICE_AFTER: u64 = 256 * 1024;
const PIPE_SIZE: i32 = 1 << 20;

/// Copies until both directions have seen EOF, or until either fails.
/// Half-closes are forwarded, so protocols that shut down their write side
/// keep working; an error in one direction ends both, blamed on the side
/// whose socket failed.
pub async fn relay(
    agent: &TcpStream,
    upstream: &TcpStream,
    counters: &Counters,
) -> Result<(), SessionError> {
    relay_synced(agent, upstream, counters, None).await
}

/// [`relay`], calling `sync` after each chunk from the agent has been
/// written upstream (and counted), and before each chunk is written to the
/// agent: the TCP fast path publishes what was forwarded with it, so the
/// kernel knows it before the agent can see any answer to those bytes.
pub async fn relay_synced(
    agent: &TcpStream,
    upstream: &TcpStream,
    counters: &Counters,
    sync: Option<&(dyn Fn() + Sync)>,
) -> Result<(), SessionError> {
    let blame = |agent_end: End| {
        move |(end, e): (End, io::Error)| {
            if end == agent_end {
                SessionError::agent(format!("agent connection: {e}"))
            } else {
                SessionError::upstream(format!("upstream connection: {e}"))
            }
        }
    };
    tokio::try_join!(
        async {
            pump(
                agent,
                upstream,
                &counters.from_agent,
                Hooks {
                    after: sync,
                    before: None,
                },
            )
            .await
            .map_err(blame(End::Source))
        },
        async {
            pump(
                upstream,
                agent,
                &counters.to_agent,
                Hooks {
                    after: None,
                    before: sync,
                },
            )
            .await
            .map_err(blame(End::Sink))
        },
    )?;
    Ok(())
}

/// Which socket of one direction failed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Source,
    Sink,
}

/// What a direction calls around its writes (see [`relay_synced`]).
#[derive(Clone, Copy)]
struct Hooks<'a> {
    /// After a chunk was written and counted.
    after: Option<&'a (dyn Fn() + Sync)>,
    /// Before a chunk is written.
    before: Option<&'a (dyn Fn() + Sync)>,
}

impl Hooks<'_> {
    fn after(&self) {
        if let Some(f) = self.after {
            f();
        }
    }
    fn before(&self) {
        if let Some(f) = self.before {
            f();
        }
    }
}

async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    count: &AtomicU64,
    hooks: Hooks<'_>,
) -> Result<(), (End, io::Error)> {
    let mut buf: Vec<u8> = Vec::with_capacity(COPY_BUF);
    let mut moved: u64 = 0;
    loop {
        if moved >= SPLICE_AFTER {
            match Pipe::new() {
                Ok(pipe) => return splice_loop(from, to, &pipe, count, hooks).await,
                // Out of fds or pipes: keep copying rather than fail the session.
                Err(e) => tracing::debug!(error = %e, "splice unavailable; copying"),
            }
        }
        buf.clear();
        let n = from
            .async_io(Interest::READABLE, || from.try_read_buf(&mut buf))
            .await
            .map_err(|e| (End::Source, e))?;
        if n == 0 {
            shutdown_write(to);
            return Ok(());
        }
        hooks.before();
        write_all(to, &buf[..n]).await.map_err(|e| (End::Sink, e))?;
        moved += n as u64;
        count.fetch_add(n as u64, Ordering::Relaxed);
        hooks.after();
    }
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = to
            .async_io(Interest::WRITABLE, || to.try_write(data))
            .await?;
        data = &data[n..];
    }
    Ok(())
}

/// Forwards a half-close; the peer may already be gone, which is fine.
fn shutdown_write(s: &TcpStream) {
    // SAFETY: shutdown(2) on a socket fd we borrow for the call.
    unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_WR) };
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 fills two fds on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds are fresh and owned by us from here on.
        let pipe = unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        // A bigger pipe means fewer splice calls per megabyte; the default
        // size still works if the system limit refuses.
        // SAFETY: fcntl on our own pipe fd.
        unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Ok(pipe)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice(2) between fds we hold; no user memory is involved.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

async fn splice_loop(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    count: &AtomicU64,
    hooks: Hooks<'_>,
) -> Result<(), (End, io::Error)> {
    let chunk = PIPE_SIZE as usize;
    loop {
        let n = from
            .async_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe.write.as_raw_fd(), chunk)
            })
            .await
            .map_err(|e| (End::Source, e))?;
        if n == 0 {
            shutdown_write(to);
            return Ok(());
        }
        hooks.before();
        let mut left = n;
        while left > 0 {
            left -= to
                .async_io(Interest::WRITABLE, || {
                    splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
                })
                .await
                .map_err(|e| (End::Sink, e))?;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        hooks.after();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    /// An echo-ish upstream behind the relay: returns everything it got,
    /// then a marker. Exercises both the copy and the splice paths.
    async fn through_relay(payload: Vec<u8>) -> (Vec<u8>, (u64, u64)) {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
            s.write_all(b"!").await.unwrap();
        });
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let proxy = tokio::spawn(async move {
            let (agent, _) = front.accept().await.unwrap();
            let up = TcpStream::connect(server_addr).await.unwrap();
            let c = Counters::default();
            relay(&agent, &up, &c).await.unwrap();
            c.snapshot()
        });
        let client = TcpStream::connect(front_addr).await.unwrap();
        let (mut r, mut w) = client.into_split();
        let writer = tokio::spawn(async move {
            w.write_all(&payload).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        (got, proxy.await.unwrap())
    }

    #[tokio::test]
    async fn relays_small_exchanges_and_counts() {
        let (got, counts) = through_relay(b"hello".to_vec()).await;
        assert_eq!(got, b"hello!");
        assert_eq!(counts, (5, 6));
    }

    #[tokio::test]
    async fn relays_bulk_through_splice_intact() {
        let payload: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
        let (got, counts) = through_relay(payload.clone()).await;
        assert_eq!(got.len(), payload.len() + 1);
        assert!(got[..payload.len()] == payload[..], "payload corrupted");
        assert_eq!(counts, (payload.len() as u64, payload.len() as u64 + 1));
    }
}
