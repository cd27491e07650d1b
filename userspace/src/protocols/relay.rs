//! Bidirectional byte relay with counters that survive errors.
//!
//! `tokio::io::copy_bidirectional` loses its byte counts when either side
//! errors, and an audit record needs them most in exactly that case.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

const BUF: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct Counters {
    pub from_agent: AtomicU64,
    pub to_agent: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.from_agent.load(Ordering::Relaxed),
            self.to_agent.load(Ordering::Relaxed),
        )
    }
}

/// Copies until both directions have seen EOF, or until either fails.
/// Half-closes are forwarded, so request/response protocols that shut down
/// their write side keep working.
pub async fn relay(
    agent: TcpStream,
    upstream: TcpStream,
    counters: &Counters,
) -> std::io::Result<()> {
    let (mut ar, mut aw) = agent.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let up = pump(&mut ar, &mut uw, &counters.from_agent);
    let down = pump(&mut ur, &mut aw, &counters.to_agent);
    let (a, b) = tokio::join!(up, down);
    a.and(b)
}

async fn pump<R, W>(r: &mut R, w: &mut W, count: &AtomicU64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            // Forward the half-close; the peer may already be gone.
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn relays_both_ways_and_counts() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let echo = tokio::spawn(async move {
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
            relay(agent, up, &c).await.unwrap();
            c.snapshot()
        });
        let mut client = TcpStream::connect(front_addr).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello!");
        echo.await.unwrap();
        assert_eq!(proxy.await.unwrap(), (5, 6));
    }
}
