//! blastgate-probe: an agent-style program for tests and the demo.
//!
//! Each subcommand tries one kind of network access an agent might attempt
//! (including the escape routes blastgate must close) and prints one JSON
//! object per attempt: `{"op", "ok", "errno", "error", "local", "peer",
//! "response"}`. It exits 0 whatever the outcome; the caller judges.

use std::{
    io::{BufRead, Read, Write},
    mem::size_of,
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    time::Duration,
};

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    op: Op,
}

#[derive(Subcommand)]
enum Op {
    /// TCP connect, send an HTTP/1.0 request, read the reply.
    Connect { addr: SocketAddr },
    /// TCP Fast Open: sendto(MSG_FASTOPEN) without connect().
    Tfo { addr: SocketAddr },
    /// connect() submitted through io_uring.
    Uring { addr: SocketAddr },
    /// One unconnected UDP datagram.
    Udp { addr: SocketAddr },
    /// UDP connect() then send().
    UdpConnected { addr: SocketAddr },
    /// bind() a TCP socket to ADDR and listen.
    Bind { addr: SocketAddr },
    /// Open a raw ICMP socket.
    Raw,
    /// Open an AF_PACKET socket.
    Packet,
    /// socket(FAMILY, TYPE, 0), then close it.
    Socket { family: i32, ty: i32 },
    /// The obsolete spelling of a packet socket: socket(AF_INET, SOCK_PACKET).
    PacketLegacy,
    /// socket(FAMILY, TYPE, 0) through the 32-bit syscall entry (`int $0x80`),
    /// as the i386 `socket` syscall, or with `--socketcall` as `socketcall`.
    Socket32 {
        family: u32,
        ty: u32,
        #[arg(long)]
        socketcall: bool,
    },
    /// socket(FAMILY, TYPE, 0) as an io_uring `IORING_OP_SOCKET` request.
    UringSocket { family: i32, ty: i32 },
    /// One io_uring submission: a packet socket into a fixed-file slot,
    /// and linked to it a sendmsg on that slot of one frame of ETHERTYPE
    /// on loopback.
    UringPacketChain { ethertype: u16 },
    /// The thread-group leader leaves (pthread_exit) while a second thread
    /// goes on: it waits for a line on stdin, prints one, and then the
    /// whole process exits.
    LeaderExit,
    /// Wait up to MS milliseconds for a frame of ETHERTYPE on any
    /// interface; prints whether one came.
    PacketListen { ethertype: u16, ms: u64 },
    /// Fork N children that stay alive together (labels held), then each
    /// connects to ADDR and prints a line; with `--double` each child forks
    /// a grandchild and exits first, so the grandchildren (which connect)
    /// are reparented. Prints a summary line, then holds every child until
    /// stdin closes.
    ForkHold {
        n: usize,
        addr: SocketAddr,
        #[arg(long)]
        double: bool,
    },
    /// Move this process to another cgroup (write to its cgroup.procs), then connect.
    Escape { cgroup: PathBuf, addr: SocketAddr },
    /// clone3(CLONE_INTO_CGROUP) a child into CGROUP; the child connects.
    Clone3 { cgroup: PathBuf, addr: SocketAddr },
    /// Fork a child and a grandchild; each connects.
    Tree { addr: SocketAddr },
    /// N concurrent connections, all at once.
    Many { n: usize, addr: SocketAddr },
    /// setuid(UID) (needs root), then connect.
    AsUid { uid: u32, addr: SocketAddr },
    /// Fork until a child gets pid PID (the pid of a dead daemon), then have
    /// that child connect to ADDR. Reports `reached: false` if the pid
    /// never came round within a few wraps of pid_max.
    PidReuse { pid: i32, addr: SocketAddr },
    /// Read lines from stdin; for each, connect to ADDR and report.
    Interactive { addr: SocketAddr },
    /// Benchmark: N times connect, send 1 byte, read 1 byte back, close;
    /// prints latency percentiles in microseconds.
    BenchRtt { addr: SocketAddr, n: usize },
    /// Benchmark: N DNS queries for NAME (type A), one at a time over one
    /// UDP socket connected to SERVER; prints latency percentiles in
    /// microseconds and how many got an answer with addresses.
    BenchDns {
        server: SocketAddr,
        name: String,
        n: usize,
    },
    /// Benchmark: send BYTES over one connection, half-close, read the
    /// server's 8-byte count; prints throughput. With --greeting, first
    /// waits for the server's one-byte greeting (a protocol that opens
    /// with an exchange, as nearly all do, before the bulk starts).
    BenchBulk {
        addr: SocketAddr,
        bytes: u64,
        #[arg(long)]
        greeting: bool,
    },
    /// Benchmark reference: a bare TCP forwarder (tokio, one thread,
    /// copy_bidirectional) from LISTEN to UPSTREAM with no identification,
    /// policy or records: the floor any userspace proxy pays on this host.
    Forward {
        listen: SocketAddr,
        upstream: SocketAddr,
    },
}

fn main() {
    let args = Args::parse();
    match args.op {
        Op::Connect { addr } => emit(connect("connect", addr)),
        Op::Tfo { addr } => emit(tfo(addr)),
        Op::Uring { addr } => emit(uring(addr)),
        Op::Udp { addr } => emit(udp(addr, false)),
        Op::UdpConnected { addr } => emit(udp(addr, true)),
        Op::Bind { addr } => emit(match std::net::TcpListener::bind(addr) {
            Ok(_) => json!({"op": "bind", "ok": true, "pid": std::process::id()}),
            Err(e) => failure("bind", e),
        }),
        Op::Raw => emit(open_socket(
            "raw",
            libc::AF_INET,
            libc::SOCK_RAW,
            libc::IPPROTO_ICMP,
        )),
        Op::Packet => emit(open_socket("packet", libc::AF_PACKET, libc::SOCK_RAW, 0)),
        Op::Socket { family, ty } => emit(open_socket("socket", family, ty, 0)),
        Op::PacketLegacy => emit(open_socket(
            "packet-legacy",
            libc::AF_INET,
            // SOCK_PACKET (libc deprecates the constant, which is the point).
            10,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        )),
        Op::Socket32 {
            family,
            ty,
            socketcall,
        } => emit(socket32(family, ty, socketcall)),
        Op::UringSocket { family, ty } => emit(uring_socket(family, ty)),
        Op::UringPacketChain { ethertype } => emit(uring_packet_chain(ethertype)),
        Op::PacketListen { ethertype, ms } => emit(packet_listen(ethertype, ms)),
        Op::LeaderExit => leader_exit(),
        Op::ForkHold { n, addr, double } => fork_hold(n, addr, double),
        Op::Escape { cgroup, addr } => {
            let moved = std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string());
            let mut v = connect("escape", addr);
            v["moved"] = json!(moved.is_ok());
            v["cgroup"] = json!(std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
            emit(v);
        }
        Op::Clone3 { cgroup, addr } => emit(clone3_into(&cgroup, addr)),
        Op::Tree { addr } => tree(addr),
        Op::Many { n, addr } => many(n, addr),
        Op::AsUid { uid, addr } => {
            // SAFETY: plain syscall; result checked.
            if unsafe { libc::setuid(uid) } != 0 {
                emit(failure("as-uid", std::io::Error::last_os_error()));
                return;
            }
            emit(connect("as-uid", addr));
        }
        Op::BenchRtt { addr, n } => emit(bench_rtt(addr, n)),
        Op::BenchDns { server, name, n } => emit(bench_dns(server, &name, n)),
        Op::BenchBulk {
            addr,
            bytes,
            greeting,
        } => emit(bench_bulk(addr, bytes, greeting)),
        Op::Forward { listen, upstream } => forward(listen, upstream),
        Op::PidReuse { pid, addr } => emit(pid_reuse(pid, addr)),
        Op::Interactive { addr } => {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                if line.is_err() {
                    break;
                }
                emit(connect("connect", addr));
            }
        }
    }
}

fn emit(v: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn failure(op: &str, e: std::io::Error) -> Value {
    json!({"op": op, "ok": false, "errno": e.raw_os_error(), "error": e.to_string(), "pid": std::process::id()})
}

fn request(mut s: TcpStream, op: &str) -> Value {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    if let Err(e) = s.write_all(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n") {
        return failure(op, e);
    }
    let mut body = Vec::new();
    match s.take(1 << 20).read_to_end(&mut body) {
        Ok(_) if !body.is_empty() => json!({
            "op": op, "ok": true, "local": local, "peer": peer, "pid": std::process::id(),
            "response": String::from_utf8_lossy(&body),
        }),
        Ok(_) => json!({"op": op, "ok": false, "error": "connection closed without a reply",
                        "local": local, "pid": std::process::id()}),
        Err(e) => failure(op, e),
    }
}

fn connect(op: &str, addr: SocketAddr) -> Value {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
        Ok(s) => request(s, op),
        Err(e) => failure(op, e),
    }
}

/// A socket address in the C layout, for the raw syscalls below.
fn raw_addr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; we fill the variant we use.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn family(addr: SocketAddr) -> i32 {
    if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

fn new_socket(domain: i32, ty: i32, proto: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) returns a fresh fd or -1.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, owned descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn tfo(addr: SocketAddr) -> Value {
    let fd = match new_socket(family(addr), libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return failure("tfo", e),
    };
    let (ss, len) = raw_addr(addr);
    let req = b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n";
    // SAFETY: valid buffer and address for the lengths given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            libc::MSG_FASTOPEN,
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if n < 0 {
        return failure("tfo", std::io::Error::last_os_error());
    }
    let mut s = TcpStream::from(fd);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut body = Vec::new();
    match (&mut s).take(1 << 20).read_to_end(&mut body) {
        Ok(_) if !body.is_empty() => json!({"op": "tfo", "ok": true, "local": local,
            "pid": std::process::id(), "response": String::from_utf8_lossy(&body)}),
        Ok(_) => json!({"op": "tfo", "ok": false, "error": "closed without a reply"}),
        Err(e) => failure("tfo", e),
    }
}

fn uring(addr: SocketAddr) -> Value {
    let fd = match new_socket(family(addr), libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return failure("uring", e),
    };
    let (ss, len) = raw_addr(addr);
    let mut ring = match io_uring::IoUring::new(4) {
        Ok(r) => r,
        Err(e) => return failure("uring", e),
    };
    let op = io_uring::opcode::Connect::new(
        io_uring::types::Fd(fd.as_raw_fd()),
        (&ss as *const libc::sockaddr_storage).cast(),
        len,
    )
    .build()
    .user_data(1);
    // SAFETY: `ss` and `fd` outlive the submission, which we wait for.
    if unsafe { ring.submission().push(&op) }.is_err() {
        return json!({"op": "uring", "ok": false, "error": "submission queue full"});
    }
    if let Err(e) = ring.submit_and_wait(1) {
        return failure("uring", e);
    }
    let res = ring.completion().next().map_or(-libc::EIO, |c| c.result());
    if res < 0 {
        return failure("uring", std::io::Error::from_raw_os_error(-res));
    }
    request(TcpStream::from(fd), "uring")
}

fn udp(addr: SocketAddr, connected: bool) -> Value {
    let op = if connected { "udp-connected" } else { "udp" };
    let fd = match new_socket(family(addr), libc::SOCK_DGRAM, 0) {
        Ok(fd) => fd,
        Err(e) => return failure(op, e),
    };
    let (ss, len) = raw_addr(addr);
    let sa = (&ss as *const libc::sockaddr_storage).cast();
    // SAFETY: valid fd, buffer and address.
    let n = unsafe {
        if connected {
            if libc::connect(fd.as_raw_fd(), sa, len) != 0 {
                return failure(op, std::io::Error::last_os_error());
            }
            libc::send(fd.as_raw_fd(), b"x".as_ptr().cast(), 1, 0)
        } else {
            libc::sendto(fd.as_raw_fd(), b"x".as_ptr().cast(), 1, 0, sa, len)
        }
    };
    if n < 0 {
        return failure(op, std::io::Error::last_os_error());
    }
    json!({"op": op, "ok": true, "pid": std::process::id()})
}

fn open_socket(op: &str, domain: i32, ty: i32, proto: i32) -> Value {
    match new_socket(domain, ty, proto) {
        Ok(_) => json!({"op": op, "ok": true, "pid": std::process::id()}),
        Err(e) => failure(op, e),
    }
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn clone3_into(cgroup: &std::path::Path, addr: SocketAddr) -> Value {
    let dir = match std::fs::File::open(cgroup) {
        Ok(d) => d,
        Err(e) => return failure("clone3", e),
    };
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // Report through a pipe: the child's stdout is shared, but its verdict
    // must reach the parent's single JSON line.
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two fds.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return failure("clone3", std::io::Error::last_os_error());
    }
    // SAFETY: clone3 without CLONE_VM behaves like fork; this program is
    // single-threaded here, and the child only connects and exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return failure("clone3", std::io::Error::last_os_error());
    }
    if pid == 0 {
        let mut v = connect("clone3-child", addr);
        v["cgroup"] = json!(std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
        let line = v.to_string();
        // SAFETY: writing a valid buffer to our pipe end, then exiting.
        unsafe {
            libc::write(fds[1], line.as_ptr().cast(), line.len());
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end; reading the read end.
    unsafe { libc::close(fds[1]) };
    let mut out = String::new();
    // SAFETY: fds[0] is ours and open.
    let mut reader = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let _ = reader.read_to_string(&mut out);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    let mut v: Value =
        serde_json::from_str(&out).unwrap_or(json!({"op": "clone3", "ok": false, "error": out}));
    v["op"] = json!("clone3");
    v["child_pid"] = json!(pid);
    v
}

fn tree(addr: SocketAddr) {
    emit(connect("tree-0", addr));
    // SAFETY: single-threaded; children only connect, print and exit.
    unsafe {
        let child = libc::fork();
        if child == 0 {
            emit(connect("tree-1", addr));
            let grandchild = libc::fork();
            if grandchild == 0 {
                emit(connect("tree-2", addr));
                libc::_exit(0);
            }
            libc::waitpid(grandchild, std::ptr::null_mut(), 0);
            libc::_exit(0);
        }
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
}

fn many(n: usize, addr: SocketAddr) {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                connect("many", addr)
            })
        })
        .collect();
    let results: Vec<Value> = handles
        .into_iter()
        .map(|h| h.join().unwrap_or(json!({"ok": false})))
        .collect();
    let ok = results.iter().filter(|v| v["ok"] == json!(true)).count();
    let errors: Vec<&Value> = results
        .iter()
        .filter(|v| v["ok"] != json!(true))
        .take(5)
        .collect();
    emit(
        json!({"op": "many", "ok": ok == n, "succeeded": ok, "attempted": n, "pid": std::process::id(), "errors": errors}),
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn bench_rtt(addr: SocketAddr, n: usize) -> Value {
    let mut lat = Vec::with_capacity(n);
    let mut failures = 0;
    for _ in 0..n {
        let t = std::time::Instant::now();
        let ok = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            Ok(())
        })();
        match ok {
            Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1e6),
            Err(_) => failures += 1,
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    json!({"op": "bench-rtt", "ok": failures == 0, "n": n, "failures": failures,
           "p50_us": percentile(&lat, 0.50), "p99_us": percentile(&lat, 0.99),
           "mean_us": lat.iter().sum::<f64>() / lat.len().max(1) as f64})
}

fn bench_dns(server: SocketAddr, name: &str, n: usize) -> Value {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RecordType},
    };
    let run = || -> std::io::Result<(Vec<f64>, usize)> {
        let qname = Name::from_ascii(format!("{name}.")).map_err(std::io::Error::other)?;
        let bind = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let sock = std::net::UdpSocket::bind(bind)?;
        sock.connect(server)?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut lat = Vec::with_capacity(n);
        let mut answered = 0;
        let mut buf = [0u8; 1500];
        for i in 0..n {
            let mut q = Message::query();
            q.metadata.id = i as u16;
            q.metadata.recursion_desired = true;
            q.add_query(Query::query(qname.clone(), RecordType::A));
            let bytes = q.to_vec().map_err(std::io::Error::other)?;
            let t = std::time::Instant::now();
            sock.send(&bytes)?;
            let got = sock.recv(&mut buf)?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            if Message::from_vec(&buf[..got]).is_ok_and(|m| !m.answers.is_empty()) {
                answered += 1;
            }
        }
        Ok((lat, answered))
    };
    match run() {
        Ok((mut lat, answered)) => {
            lat.sort_by(|a, b| a.total_cmp(b));
            json!({"op": "bench-dns", "ok": answered == n, "n": n, "answered": answered,
                   "p50_us": percentile(&lat, 0.50), "p99_us": percentile(&lat, 0.99)})
        }
        Err(e) => failure("bench-dns", e),
    }
}

fn bench_bulk(addr: SocketAddr, bytes: u64, greeting: bool) -> Value {
    let run = || -> std::io::Result<(u64, f64)> {
        let buf = vec![0x5au8; 256 * 1024];
        let t = std::time::Instant::now();
        let mut s = TcpStream::connect(addr)?;
        if greeting {
            let mut hello = [0u8; 1];
            loop {
                match s.read(&mut hello) {
                    Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            s.write_all(&buf[..n])?;
            left -= n as u64;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        let mut count = [0u8; 8];
        // A socket in a sockmap (blastgate's TCP fast path) can answer a
        // blocking read with EAGAIN on a spurious wake-up (kernel
        // tcp_bpf_recvmsg); retry it, as a non-blocking client would.
        let mut got = 0;
        while got < count.len() {
            match s.read(&mut count[got..]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok((u64::from_be_bytes(count), t.elapsed().as_secs_f64()))
    };
    match run() {
        Ok((received, secs)) => json!({"op": "bench-bulk", "ok": received == bytes, "bytes": bytes,
            "received": received, "seconds": secs, "gbit_per_s": bytes as f64 * 8.0 / secs / 1e9}),
        Err(e) => failure("bench-bulk", e),
    }
}

fn forward(listen: SocketAddr, upstream: SocketAddr) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return emit(failure("forward", e)),
    };
    rt.block_on(async move {
        let l = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => return emit(failure("forward", e)),
        };
        emit(json!({"op": "forward", "ok": true, "listen": listen.to_string()}));
        loop {
            let Ok((mut a, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut b) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = a.set_nodelay(true);
                    let _ = b.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    });
}

fn pid_reuse(target: i32, addr: SocketAddr) -> Value {
    let pid_max: i64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304);
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two fds.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return failure("pid-reuse", std::io::Error::last_os_error());
    }
    for attempt in 0..pid_max * 3 {
        // SAFETY: single-threaded; the child only checks its pid, maybe
        // connects and reports through the pipe, then exits.
        let child = unsafe { libc::fork() };
        if child < 0 {
            return failure("pid-reuse", std::io::Error::last_os_error());
        }
        if child == 0 {
            // SAFETY: getpid/_exit in the child.
            unsafe {
                if libc::getpid() != target {
                    libc::_exit(0);
                }
                let mut v = connect("pid-reuse", addr);
                v["attempts"] = json!(attempt);
                let line = v.to_string();
                libc::write(fds[1], line.as_ptr().cast(), line.len());
                libc::_exit(0);
            }
        }
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
        if child == target {
            // SAFETY: closing our write end, then reading what the child wrote.
            unsafe { libc::close(fds[1]) };
            let mut out = String::new();
            let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
            let _ = r.read_to_string(&mut out);
            let mut v: Value =
                serde_json::from_str(&out).unwrap_or(json!({"ok": false, "error": out}));
            v["reached"] = json!(true);
            return v;
        }
    }
    json!({"op": "pid-reuse", "ok": false, "reached": false})
}

/// A 32-bit syscall from this 64-bit process: `int $0x80` takes the i386
/// numbers and 32-bit arguments in ebx, ecx, edx.
#[cfg(target_arch = "x86_64")]
fn int80(nr: u32, a: u32, b: u32, c: u32) -> i32 {
    let ret: u32;
    // SAFETY: the syscalls used here (socket, socketcall) only read their
    // arguments; rbx, which LLVM reserves, is swapped in and restored.
    unsafe {
        std::arch::asm!(
            "xchg {a}, rbx",
            "int 0x80",
            "xchg {a}, rbx",
            a = inout(reg) u64::from(a) => _,
            inlateout("eax") nr => ret,
            in("ecx") b,
            in("edx") c,
        );
    }
    ret as i32
}

#[cfg(target_arch = "x86_64")]
fn socket32(family: u32, ty: u32, socketcall: bool) -> Value {
    let op = if socketcall {
        "socketcall32"
    } else {
        "socket32"
    };
    let fd = if socketcall {
        // socketcall's argument block must sit below 4 GiB.
        // SAFETY: a fresh anonymous mapping, unmapped below.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return failure(op, std::io::Error::last_os_error());
        }
        let args = page.cast::<u32>();
        // SAFETY: the page is ours, writable and large enough.
        let fd = unsafe {
            args.write(family);
            args.add(1).write(ty);
            args.add(2).write(0);
            int80(102, 1, args as usize as u32, 0)
        };
        // SAFETY: unmapping the page mapped above.
        unsafe { libc::munmap(page, 4096) };
        fd
    } else {
        int80(359, family, ty, 0)
    };
    if fd < 0 {
        return failure(op, std::io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: closing the descriptor the kernel just gave us.
    unsafe { libc::close(fd) };
    json!({"op": op, "ok": true, "pid": std::process::id()})
}

#[cfg(not(target_arch = "x86_64"))]
fn socket32(_family: u32, _ty: u32, _socketcall: bool) -> Value {
    json!({"op": "socket32", "ok": false, "error": "x86_64 only"})
}

fn uring_socket(family: i32, ty: i32) -> Value {
    let mut ring = match io_uring::IoUring::new(4) {
        Ok(r) => r,
        Err(e) => return failure("uring-socket", e),
    };
    let op = io_uring::opcode::Socket::new(family, ty, 0)
        .build()
        .user_data(1);
    // SAFETY: the request references no memory of ours.
    if unsafe { ring.submission().push(&op) }.is_err() {
        return json!({"op": "uring-socket", "ok": false, "error": "submission queue full"});
    }
    if let Err(e) = ring.submit_and_wait(1) {
        return failure("uring-socket", e);
    }
    let res = ring.completion().next().map_or(-libc::EIO, |c| c.result());
    if res < 0 {
        return failure("uring-socket", std::io::Error::from_raw_os_error(-res));
    }
    // SAFETY: closing the descriptor the ring created for us.
    unsafe { libc::close(res) };
    json!({"op": "uring-socket", "ok": true, "pid": std::process::id()})
}

fn pipe() -> [i32; 2] {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two fds.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        emit(failure("pipe", std::io::Error::last_os_error()));
        std::process::exit(1);
    }
    fds
}

/// Blocks until every write end of `fd` is closed.
fn wait_eof(fd: i32) {
    let mut b = [0u8; 1];
    // SAFETY: reading one byte into a valid buffer from our own fd.
    while unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) } > 0 {}
}

fn fork_hold(n: usize, addr: SocketAddr, double: bool) {
    let [go_r, go_w] = pipe();
    let [res_r, res_w] = pipe();
    let [done_r, done_w] = pipe();
    let mut children = Vec::new();
    for i in 0..n {
        // SAFETY: single-threaded; the child only uses pipes, connects,
        // writes one line and exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            emit(failure("fork-hold", std::io::Error::last_os_error()));
            break;
        }
        if pid == 0 {
            // SAFETY: closing the ends this child does not use.
            unsafe {
                libc::close(go_w);
                libc::close(res_r);
                libc::close(done_w);
            }
            if double {
                let middle = std::process::id();
                // SAFETY: as above; the middle process exits at once.
                if unsafe { libc::fork() } != 0 {
                    unsafe { libc::_exit(0) };
                }
                while std::os::unix::process::parent_id() == middle {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            wait_eof(go_r);
            let mut v = connect("fork-hold", addr);
            v["index"] = json!(i);
            v["ppid"] = json!(std::os::unix::process::parent_id());
            let line = format!("{v}\n");
            // SAFETY: one write of a line shorter than PIPE_BUF is atomic.
            unsafe {
                libc::write(res_w, line.as_ptr().cast(), line.len());
                libc::close(res_w);
            }
            wait_eof(done_r);
            // SAFETY: leaving the child without running the parent's atexit.
            unsafe { libc::_exit(0) };
        }
        if double {
            // Reap the middle process so its child is reparented now.
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        } else {
            children.push(pid);
        }
    }
    // SAFETY: closing our copies: the children see EOF on `go` and the
    // results pipe ends when the last child has written.
    unsafe {
        libc::close(go_r);
        libc::close(res_w);
        libc::close(done_r);
        libc::close(go_w);
    }
    // SAFETY: res_r is ours and open.
    let mut results = unsafe { std::fs::File::from_raw_fd(res_r) };
    let mut out = String::new();
    let _ = results.read_to_string(&mut out);
    let mut reported = 0;
    for line in out.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            emit(v);
            reported += 1;
        }
    }
    emit(
        json!({"op": "fork-hold-summary", "ok": reported == n, "children": n,
                "reported": reported, "pid": std::process::id()}),
    );
    let mut sink = String::new();
    let _ = std::io::stdin().read_to_string(&mut sink);
    // SAFETY: releasing the children, then reaping those that are ours.
    unsafe { libc::close(done_w) };
    for pid in children {
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
}

fn uring_packet_chain(ethertype: u16) -> Value {
    let op = "uring-packet-chain";
    let mut ring = match io_uring::IoUring::new(4) {
        Ok(r) => r,
        Err(e) => return failure(op, e),
    };
    if let Err(e) = ring.submitter().register_files_sparse(1) {
        return failure(op, e);
    }
    let Ok(slot) = io_uring::types::DestinationSlot::try_from_slot_target(0) else {
        return json!({"op": op, "ok": false, "error": "slot"});
    };
    let proto = ethertype.to_be();
    let socket = io_uring::opcode::Socket::new(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto))
        .file_index(Some(slot))
        .build()
        .flags(io_uring::squeue::Flags::IO_LINK)
        .user_data(1);
    // SAFETY: all-zero is a valid sockaddr_ll; the fields used are set.
    let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = proto;
    ll.sll_ifindex = 1;
    ll.sll_halen = 6;
    let payload = b"blastgate-uring-chain";
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: all-zero is a valid msghdr; the fields used are set.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut ll as *mut libc::sockaddr_ll).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let send = io_uring::opcode::SendMsg::new(io_uring::types::Fixed(0), &msg)
        .build()
        .user_data(2);
    // SAFETY: `msg`, `ll`, `iov` and `payload` outlive the submission,
    // which is waited for.
    unsafe {
        let mut sq = ring.submission();
        if sq.push(&socket).is_err() || sq.push(&send).is_err() {
            return json!({"op": op, "ok": false, "error": "submission queue full"});
        }
    }
    if let Err(e) = ring.submit_and_wait(2) {
        return failure(op, e);
    }
    let results: Vec<i32> = ring.completion().map(|c| c.result()).collect();
    json!({"op": op, "ok": results.iter().all(|r| *r >= 0), "results": results,
           "pid": std::process::id()})
}

fn packet_listen(ethertype: u16, ms: u64) -> Value {
    let op = "packet-listen";
    let fd = match new_socket(
        libc::AF_PACKET,
        libc::SOCK_DGRAM,
        i32::from(ethertype.to_be()),
    ) {
        Ok(fd) => fd,
        Err(e) => return failure(op, e),
    };
    let tv = libc::timeval {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_usec: ((ms % 1000) * 1000) as libc::suseconds_t,
    };
    // SAFETY: setting a timeval option on our own socket.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    emit(json!({"op": "packet-listen-ready", "ok": true}));
    let mut buf = [0u8; 256];
    // SAFETY: reading into a valid buffer from our own socket.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let got = n > 0;
    json!({"op": op, "ok": true, "received": got,
           "payload": String::from_utf8_lossy(&buf[..n.max(0) as usize])})
}

fn leader_exit() {
    std::thread::spawn(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        emit(json!({"op": "leader-exit", "ok": true, "pid": std::process::id()}));
        std::process::exit(0);
    });
    emit(json!({"op": "leader-exit-started", "ok": true, "pid": std::process::id()}));
    // SAFETY: the raw exit syscall ends only the calling thread (not the
    // group, and without unwinding, which pthread_exit would try through
    // Rust's main); the spawned thread keeps the process alive and exits it.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
}
