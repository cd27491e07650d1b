#!/usr/bin/env python3
"""Records the raw HTTP/1 requests a real client (kubectl) sends: one file
per connection under OUT_DIR, then a 404 Kubernetes Status and close.

  http_capture.py PORT OUT_DIR COUNT    (loopback only; COUNT connections)
"""
import json
import os
import socket
import sys


def main(port, out_dir, count):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(8)
    srv.settimeout(20)
    status = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "reason": "NotFound", "code": 404}).encode()
    for n in range(count):
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            break
        conn.settimeout(0.5)
        data = b""
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
        with open(os.path.join(out_dir, f"request-{n:02}.http"), "wb") as f:
            f.write(data)
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(status) + status)
        conn.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
