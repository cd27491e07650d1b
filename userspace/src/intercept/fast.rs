//! The TCP passthrough fast path, seen from the daemon.
//!
//! A `tcp` target needs no bytes to be decided, so once its connect is
//! allowed and the upstream is connected, the daemon pairs the agent's
//! socket with its upstream socket in the kernel ([`FastPath::pair`]).
//! The kernel's `sk_msg` program then appends the agent's bytes straight
//! to the upstream socket's send queue, as soon as the daemon has forwarded
//! every byte the agent had sent through the proxy before (the daemon
//! publishes that count: [`Pairing::publish`]); the agent's bytes then cross
//! the loopback TCP stack once, as on a direct connection. The other
//! direction stays on the daemon's relay, as do half-closes and errors,
//! which the proxy-facing TCP connection still carries.
//!
//! The pairing ends with its [`Pairing`] guard, before the sockets are
//! closed: the upstream socket leaves the kernel's map, so a cut (reload,
//! daemon stop) stops the redirect at once. A daemon that dies closes its
//! upstream sockets, which the kernel removes from the map itself: the
//! agents' sends then fail; they cannot reach anything else.
//!
//! Anything the kernel refuses leaves the session on the userspace relay,
//! which carries whatever reaches the proxy in every case.

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use aya::maps::{HashMap, MapData, SockHash};
use blastgate_common::{map, FastCounts, FastPair, SockKey};

use crate::Error;

fn map_err(name: &str, e: impl std::fmt::Display) -> Error {
    Error::Kernel(format!("map {name}: {e}"))
}

/// The daemon's handles on the fast-path maps.
pub struct FastPath {
    /// Agent sockets sockops enrolled (the map carries the program).
    agents: Mutex<SockHash<MapData, SockKey>>,
    upstreams: Mutex<SockHash<MapData, u64>>,
    pairs: Mutex<HashMap<MapData, SockKey, FastPair>>,
    counts: Mutex<HashMap<MapData, SockKey, FastCounts>>,
    /// Sessions paired so far, for `blastgate status`.
    pub paired: AtomicU64,
}

impl FastPath {
    pub fn new(
        agents: SockHash<MapData, SockKey>,
        upstreams: SockHash<MapData, u64>,
        pairs: HashMap<MapData, SockKey, FastPair>,
        counts: HashMap<MapData, SockKey, FastCounts>,
    ) -> FastPath {
        FastPath {
            agents: Mutex::new(agents),
            upstreams: Mutex::new(upstreams),
            pairs: Mutex::new(pairs),
            counts: Mutex::new(counts),
            paired: AtomicU64::new(0),
        }
    }

    /// Forgets the pairings an earlier daemon left (their upstream sockets
    /// died with it, so they could only refuse those agents' sends).
    pub fn clear(&self) {
        let mut pairs = lock(&self.pairs);
        let keys: Vec<SockKey> = pairs.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = pairs.remove(&k);
        }
    }

    /// Pairs the agent socket whose local address is `agent` with the
    /// daemon's `upstream` socket; `forwarded` is what the daemon has
    /// already written upstream from the agent. Fails (and leaves nothing
    /// in the kernel) when the kernel refuses.
    pub fn pair<S: AsFd>(
        &self,
        agent: SockKey,
        upstream: &S,
        forwarded: u64,
    ) -> Result<Pairing<'_>, Error> {
        let fd = upstream.as_fd();
        let cookie = socket_cookie(fd.as_raw_fd())
            .map_err(|e| Error::io("reading the upstream socket's cookie", e))?;
        lock(&self.upstreams)
            .insert(cookie, fd.as_raw_fd(), 0)
            .map_err(|e| map_err(map::FAST_UPSTREAMS, e))?;
        let pairing = Pairing {
            fast: self,
            agent,
            upstream: cookie,
            published: Mutex::new(None),
            written_at_pairing: written(fd.as_raw_fd()).map_or(0, |w| w.bytes),
            forwarded_at_pairing: forwarded,
        };
        pairing.publish(forwarded)?;
        self.paired.fetch_add(1, Ordering::Relaxed);
        Ok(pairing)
    }
}

/// One paired session; dropping it unpairs (call before closing the sockets).
pub struct Pairing<'a> {
    fast: &'a FastPath,
    agent: SockKey,
    upstream: u64,
    /// The `forwarded` count last written to the kernel.
    published: Mutex<Option<u64>>,
    /// What had been written to the upstream socket when it was paired.
    written_at_pairing: u64,
    forwarded_at_pairing: u64,
}

impl Pairing<'_> {
    /// Tells the kernel the daemon has written `forwarded` bytes from the
    /// agent upstream. Must only be called with bytes already written;
    /// a stale or repeated value only delays the switch.
    pub fn publish(&self, forwarded: u64) -> Result<(), Error> {
        let mut last = lock(&self.published);
        if *last == Some(forwarded) {
            return Ok(());
        }
        let pair = FastPair {
            upstream: self.upstream,
            forwarded,
        };
        lock(&self.fast.pairs)
            .insert(self.agent, pair, 0)
            .map_err(|e| map_err(map::FAST_PAIRS, e))?;
        *last = Some(forwarded);
        Ok(())
    }

    /// The `forwarded` count given at pairing.
    pub fn published_first(&self) -> u64 {
        self.forwarded_at_pairing
    }

    /// The agent socket's key.
    pub fn agent(&self) -> SockKey {
        self.agent
    }

    /// Bytes written to the upstream socket since it was paired, by the
    /// daemon and by the kernel's redirect together (read from the socket:
    /// the sk_msg program sees attempts, some of which a full socket
    /// refuses, not what was sent).
    pub fn written_since<S: AsFd>(&self, upstream: &S, relay_ended_well: bool) -> Option<u64> {
        written(upstream.as_fd().as_raw_fd()).ok().map(|w| {
            let fin = u64::from(w.fin(relay_ended_well));
            w.bytes
                .saturating_sub(fin)
                .saturating_sub(self.written_at_pairing)
        })
    }

    /// What the kernel counted for the agent socket.
    pub fn counts(&self) -> Option<FastCounts> {
        lock(&self.fast.counts).get(&self.agent, 0).ok()
    }

    /// Has the agent's socket switched to the upstream?
    pub fn direct(&self) -> bool {
        self.counts().is_some_and(|c| c.direct != 0)
    }
}

impl Drop for Pairing<'_> {
    fn drop(&mut self) {
        // The pairing first, then the socket: from here on the agent's
        // bytes go to the proxy again (which is closing its end).
        let _ = lock(&self.fast.pairs).remove(&self.agent);
        let _ = lock(&self.fast.upstreams).remove(&self.upstream);
    }
}

/// Removes what the kernel keeps for the agent socket `agent` (at the end
/// of its connection's handling, paired or not).
impl FastPath {
    /// Takes an agent socket that will not be paired (its target is not
    /// a passthrough one) out of the map: its I/O is plain TCP again.
    pub fn release(&self, agent: SockKey) {
        let _ = lock(&self.agents).remove(&agent);
        let _ = lock(&self.counts).remove(&agent);
    }

    pub fn forget(&self, agent: SockKey) -> Option<FastCounts> {
        let mut counts = lock(&self.counts);
        let c = counts.get(&agent, 0).ok();
        let _ = counts.remove(&agent);
        c
    }
}

/// Offsets in `struct tcp_info` (uapi, stable): `tcpi_state` and
/// `tcpi_bytes_acked`.
const TCPI_STATE: usize = 0;
const TCPI_BYTES_ACKED: usize = 120;
const TCP_INFO_LEN: usize = 128;

/// Sequence space the socket's owner has used (bytes acknowledged plus
/// still queued; a FIN counts one), and the TCP state.
struct Written {
    bytes: u64,
    state: u8,
}

impl Written {
    /// Has this end sent its FIN?
    fn fin(&self, relay_ended_well: bool) -> bool {
        // FIN_WAIT1/2, TIME_WAIT, LAST_ACK, CLOSING; CLOSE after a
        // relay that forwarded both EOFs.
        matches!(self.state, 4 | 5 | 6 | 9 | 11) || (relay_ended_well && self.state == 7)
    }
}

/// Bytes written to a socket, from its TCP state.
fn written(fd: i32) -> std::io::Result<Written> {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if (len as usize) < TCP_INFO_LEN {
        return Err(std::io::Error::other("tcp_info too short"));
    }
    let mut acked = [0u8; 8];
    acked.copy_from_slice(&info[TCPI_BYTES_ACKED..TCPI_BYTES_ACKED + 8]);
    let acked = u64::from_ne_bytes(acked);
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Written {
        bytes: acked + queued.max(0) as u64,
        state: info[TCPI_STATE],
    })
}

/// `SO_COOKIE` of a socket: the kernel's unique, never reused id for it.
pub fn socket_cookie(fd: i32) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
