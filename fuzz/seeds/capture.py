#!/usr/bin/env python3
"""Records real protocol traffic as fuzz seeds (README.md, "Fuzzing").

Every seed is a sequence of records [kind, len_lo, len_hi, bytes...]: even
kinds are the client's bytes, odd kinds the server's, each one chunk as it
was read. Modes:

  capture.py tcp LISTEN_PORT UPSTREAM_PORT OUT   relay one TCP connection
  capture.py exec OUT -- COMMAND...              wrap a stdio server (sftp -D)

Only loopback is used.
"""
import os
import select
import socket
import struct
import subprocess
import sys


def record(out, kind, data):
    while data:
        chunk, data = data[:65535], data[65535:]
        out.write(bytes([kind]) + struct.pack("<H", len(chunk)) + chunk)


def tcp(listen_port, upstream_port, path):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", listen_port))
    srv.listen(1)
    client, _ = srv.accept()
    upstream = socket.create_connection(("127.0.0.1", upstream_port))
    with open(path, "wb") as out:
        peers = {client: (upstream, 0), upstream: (client, 1)}
        open_ = set(peers)
        while open_:
            ready, _, _ = select.select(list(open_), [], [], 10)
            if not ready:
                break
            for s in ready:
                data = s.recv(65536)
                other, kind = peers[s]
                if not data:
                    open_.discard(s)
                    try:
                        other.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    continue
                record(out, kind, data)
                other.sendall(data)


def wrap(path, argv):
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    inp, outp = sys.stdin.buffer, sys.stdout.buffer
    with open(path, "wb") as out:
        fds = {inp.fileno(), child.stdout.fileno()}
        while fds:
            ready, _, _ = select.select(list(fds), [], [])
            for fd in ready:
                data = os.read(fd, 65536)
                if fd == inp.fileno():
                    if not data:
                        fds.discard(fd)
                        child.stdin.close()
                        continue
                    record(out, 0, data)
                    child.stdin.write(data)
                    child.stdin.flush()
                else:
                    if not data:
                        fds.discard(fd)
                        continue
                    record(out, 1, data)
                    os.write(outp.fileno(), data)
    child.wait()


if __name__ == "__main__":
    if sys.argv[1] == "tcp":
        tcp(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "exec":
        wrap(sys.argv[2], sys.argv[4:])
    else:
        sys.exit(__doc__)
