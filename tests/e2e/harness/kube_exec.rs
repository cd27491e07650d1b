//! `pods/exec` over WebSocket for the Kubernetes stand-in ([`super::kube`]),
//! switched on with [`super::kube::KubeStandIn::serve_exec`]: enough of the
//! remote-command protocol (`v5.channel.k8s.io`, `v4.channel.k8s.io`) for
//! kubectl 1.37 to run a command and print its output, so a test can hold
//! an upgrade tunnel open through a gateway.
//!
//! Commands: `tick` writes `tick N` lines to stdout every [`TICK`] until the
//! client goes away (or `tick COUNT` lines, then succeeds); anything else
//! prints `ran: ARGS` and succeeds. Every byte of stdout written is counted
//! in [`ExecStats`]. SPDY is still refused (kubectl tries WebSocket first).

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use base64::Engine;
use hyper::{header, upgrade::OnUpgrade, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::kube::RecordedRequest;

/// The pause between two `tick` lines.
pub const TICK: Duration = Duration::from_millis(100);

const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const STDOUT: u8 = 1;
const STATUS: u8 = 3;

/// What the exec sessions did, for tests to compare with what the client
/// received.
#[derive(Default)]
pub struct ExecStats {
    /// Exec sessions the stand-in switched to WebSocket.
    pub started: AtomicUsize,
    /// Exec sessions whose connection has ended.
    pub ended: AtomicUsize,
    /// Bytes of stdout written (payload, without framing).
    pub stdout_bytes: AtomicU64,
}

/// The 101 for a WebSocket exec request, with the session started on the
/// upgraded connection; `None` if `req` is not one.
pub(super) fn websocket(
    req: &RecordedRequest,
    on: OnUpgrade,
    stats: Arc<ExecStats>,
) -> Option<Response<super::kube::Body>> {
    if !req.path.ends_with("/exec")
        || !req
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
    {
        return None;
    }
    let key = req.header("sec-websocket-key")?;
    let offered = req.header("sec-websocket-protocol").unwrap_or("");
    let protocol = PROTOCOLS
        .iter()
        .find(|p| offered.split(',').any(|o| o.trim() == **p))?;
    let command: Vec<String> = req
        .query
        .as_deref()
        .map(super::kube::query_pairs)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v)
        .collect();
    let accept = base64::engine::general_purpose::STANDARD
        .encode(sha1(format!("{key}{WS_GUID}").as_bytes()));
    tokio::spawn(async move {
        let Ok(upgraded) = on.await else { return };
        stats.started.fetch_add(1, Ordering::SeqCst);
        run(TokioIo::new(upgraded), command, &stats).await;
        stats.ended.fetch_add(1, Ordering::SeqCst);
    });
    Some(
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "Upgrade")
            .header("sec-websocket-accept", accept)
            .header("sec-websocket-protocol", *protocol)
            .body(super::kube::empty())
            .expect("101 response"),
    )
}

/// Runs `command` on the connection: the output is written while the
/// client's frames are read (pings answered, a close ends it).
async fn run<S: AsyncRead + AsyncWrite + Unpin>(io: S, command: Vec<String>, stats: &ExecStats) {
    let (mut rd, wr) = tokio::io::split(io);
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let writer = wr.clone();
    let output = async move {
        let lines = match command.first().map(String::as_str) {
            Some("tick") => command.get(1).and_then(|n| n.parse().ok()),
            _ => {
                let line = format!("ran: {}\n", command.join(" "));
                stdout(&writer, line.as_bytes(), stats).await?;
                Some(0)
            }
        };
        let mut n = 0u64;
        while lines.is_none_or(|max| n < max) {
            n += 1;
            stdout(&writer, format!("tick {n}\n").as_bytes(), stats).await?;
            tokio::time::sleep(TICK).await;
        }
        let mut status = vec![STATUS];
        status.extend_from_slice(br#"{"metadata":{},"status":"Success"}"#);
        let mut w = writer.lock().await;
        frame(&mut *w, 0x2, &status).await?;
        frame(&mut *w, 0x8, &1000u16.to_be_bytes()).await
    };
    let input = async {
        loop {
            let (opcode, payload) = read_frame(&mut rd).await?;
            match opcode {
                0x9 => frame(&mut *wr.lock().await, 0xA, &payload).await?,
                0x8 => return Ok::<_, std::io::Error>(()),
                _ => {}
            }
        }
    };
    tokio::select! {
        _ = output => {}
        _ = input => {}
    }
    let _ = wr.lock().await.shutdown().await;
}

async fn stdout<W: AsyncWrite + Unpin>(
    w: &tokio::sync::Mutex<W>,
    data: &[u8],
    stats: &ExecStats,
) -> std::io::Result<()> {
    let mut payload = vec![STDOUT];
    payload.extend_from_slice(data);
    frame(&mut *w.lock().await, 0x2, &payload).await?;
    stats
        .stdout_bytes
        .fetch_add(data.len() as u64, Ordering::SeqCst);
    Ok(())
}

/// One unmasked, final frame (a server's).
async fn frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut head = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => head.push(n as u8),
        n if n <= 0xFFFF => {
            head.push(126);
            head.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            head.push(127);
            head.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    head.extend_from_slice(payload);
    w.write_all(&head).await?;
    w.flush().await
}

/// One frame from the client (masked), unmasked.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let mut len = u64::from(head[1] & 0x7F);
    if len == 126 {
        len = u64::from(r.read_u16().await?);
    } else if len == 127 {
        len = r.read_u64().await?;
    }
    let mut mask = [0u8; 4];
    if head[1] & 0x80 != 0 {
        r.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len.min(1 << 20) as usize];
    r.read_exact(&mut payload).await?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Ok((head[0] & 0x0F, payload))
}

/// SHA-1 (RFC 3174), for the WebSocket accept key only.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}
