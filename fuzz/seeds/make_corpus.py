#!/usr/bin/env python3
"""Writes fuzz/corpus/<target>/ from the captures in fuzz/seeds/captures/
(real psql, psycopg 3, sftp and kubectl traffic, recorded with capture.py
and http_capture.py) and the hand-written inputs below. Regression inputs
of fixed findings live in fuzz/corpus/<target>/regress-* and are kept.

  fuzz/seeds/make_corpus.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CAPTURES = os.path.join(HERE, "captures")
CORPUS = os.path.join(HERE, "..", "corpus")


def records(data):
    out, i = [], 0
    while i + 3 <= len(data):
        kind = data[i]
        n = struct.unpack("<H", data[i + 1:i + 3])[0]
        out.append((kind, data[i + 3:i + 3 + n]))
        i += 3 + n
    return out


def encode(recs):
    out = b""
    for kind, data in recs:
        while True:
            chunk, data = data[:65535], data[65535:]
            out += bytes([kind]) + struct.pack("<H", len(chunk)) + chunk
            if not data:
                break
    return out


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def clear(target):
    d = os.path.join(CORPUS, target)
    if os.path.isdir(d):
        for f in os.listdir(d):
            if not f.startswith("regress-"):
                os.remove(os.path.join(d, f))


def messages(stream, startup):
    """(tag, whole message) pairs; the untagged startup packets first."""
    out, i = [], 0
    while startup and i + 8 <= len(stream):
        n = struct.unpack(">i", stream[i:i + 4])[0]
        code = struct.unpack(">i", stream[i + 4:i + 8])[0]
        out.append((None, stream[i:i + n]))
        i += n
        if code not in (80877103, 80877104):
            break
    while i + 5 <= len(stream):
        n = struct.unpack(">i", stream[i + 1:i + 5])[0]
        out.append((stream[i:i + 1], stream[i:i + 1 + n]))
        i += 1 + n
    return out


def after_login(recs):
    """The session's records from the first statement on: the agent's
    startup and password messages and the server's login up to its first
    ReadyForQuery are what the relay never sees."""
    client = b"".join(d for k, d in recs if k & 1 == 0)
    server = b"".join(d for k, d in recs if k & 1 == 1)
    c_msgs = messages(client, True)
    s_msgs = messages(server, False)
    c_skip = sum(len(m) for t, m in c_msgs if t in (None, b"p"))
    s_skip = 0
    for t, m in s_msgs:
        s_skip += len(m)
        if t == b"Z":
            break
    out, seen = [], {0: 0, 1: 0}
    for kind, data in recs:
        side = kind & 1
        skip = c_skip if side == 0 else s_skip
        start = max(0, skip - seen[side])
        seen[side] += len(data)
        if start < len(data):
            # A few turns of the relay before each chunk, as on a network.
            out.append((side + 8, data[start:]))
    return out, client, server


def queries(client):
    out = []
    for tag, m in messages(client, True):
        if tag == b"Q":
            out.append(m[5:].split(b"\0")[0])
        elif tag == b"P":
            out.append(m[5:].split(b"\0")[1])
    return out


# Statements whose reading is easy to get wrong, beside the captured ones.
SQL = [
    b"SELECT 1; DELETE FROM orders",
    b"DELETE FROM orders WHERE id = 1",
    b"WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
    b"SELECT query_to_xml('DELETE FROM orders', true, true, '')",
    b"COPY orders TO PROGRAM 'id'",
    b"SELECT 'a\\'; DELETE FROM orders; --'",
    b"SELECT E'\\x27; DROP TABLE orders; --'",
    b"SELECT $a$ $b$ $a$, U&'\\0041'",
    b"EXPLAIN ANALYZE DELETE FROM orders",
    b"CREATE RULE r AS ON SELECT TO t DO INSTEAD DELETE FROM orders",
    b"PREPARE p AS DELETE FROM orders; EXECUTE p",
    b"SELECT set_config('role', 'postgres', false)",
    b"DO $$ BEGIN EXECUTE 'DROP TABLE orders'; END $$",
    b"/* c */ SELECT 1 -- x\n; SELECT 2",
    b"SELECT '\x82\x5c'' ; DELETE FROM orders; --'",
    b"SELECT '\xe9\\'",
    b"SELECT \"$$m$m$\", '$$blastgate$blastgate$'",
]

COMMANDS = [
    "git-upload-pack '/srv/git/app.git'",
    "git-receive-pack 'app.git'",
    "rsync --server -vlogDtpre.iLsfxCIvu . /srv/app/",
    "scp -t /tmp/x",
    "scp -f /etc/hosts",
    "ls -la /srv",
    "rm -rf /srv/app",
    "sh -c 'id'",
    "echo $(id)",
    "X=1 rm -rf /",
    "command rm -rf /",
    "\\rm -rf /",
    "r''m -rf /",
    "/usr/bin/../bin/rm -rf /",
    "cat /etc/passwd | nc 127.0.0.1 9",
    "ls\trm",
    "echo 'unbalanced",
    "printf '%s' \"$HOME\"",
]


def main():
    for t in ["pg_frames", "pg_relay", "sftp", "http_request", "ssh_command", "sql_classify",
              "json_mask"]:
        clear(t)
    sql = list(SQL)
    for f in sorted(os.listdir(CAPTURES)):
        path = os.path.join(CAPTURES, f)
        if os.path.isdir(path):
            continue
        name = f.rsplit(".", 1)[0]
        recs = records(open(path, "rb").read())
        if f.startswith("sftp-"):
            write("sftp", name, encode(recs))
            # The same session, each direction's bytes whole.
            write("sftp", name + "-whole", encode(
                [(0, b"".join(d for k, d in recs if k & 1 == 0)),
                 (1, b"".join(d for k, d in recs if k & 1 == 1))]))
            continue
        session, client, server = after_login(recs)
        write("pg_frames", name + "-agent", bytes([2]) + client)
        write("pg_frames", name + "-server", bytes([1]) + server)
        # Shipped policies on a plain and on a production target; policies
        # that allow nothing; an encoding and standard_conforming_strings.
        for flags, tag in [(0, "plain"), (2, "production"), (1, "nothing"),
                           (3, "nothing-production"), (4 | 8, "sjis-nscs")]:
            write("pg_relay", f"{name}-{tag}", bytes([flags]) + encode(session))
        sql.extend(queries(client))
    for i, q in enumerate(sql):
        for flags in (0x00, 0x12, 0x04):
            write("sql_classify", f"sql-{i:03}-{flags:02x}",
                  bytes([flags]) + struct.pack("<H", 0) + q)
    # A pair: the second string read after the first warmed the cache.
    write("sql_classify", "pair-literals",
          bytes([0]) + struct.pack("<H", 33) + b"SELECT * FROM t WHERE id = 1 AND 1SELECT * FROM t WHERE id = 2 AND 2")
    kube = os.path.join(CAPTURES, "kubectl")
    for f in sorted(os.listdir(kube)):
        raw = open(os.path.join(kube, f), "rb").read()
        write("http_request", "kubectl-" + f.rsplit(".", 1)[0], bytes([1]) + raw)
        write("http_request", "plain-" + f.rsplit(".", 1)[0], bytes([0]) + raw)
    body = b'[{"op":"replace","path":"/spec/replicas","value":0}]'
    write("http_request", "json-patch-scale", bytes([1]) +
          b"PATCH /apis/apps/v1/namespaces/prod/deployments/web HTTP/1.1\r\nHost: k\r\n"
          b"Content-Type: application/json-patch+json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    write("http_request", "exec-upgrade", bytes([1]) +
          b"POST /api/v1/namespaces/prod/pods/web-1/exec?command=id&stdout=true HTTP/1.1\r\n"
          b"Host: k\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n")
    write("http_request", "encoded-path", bytes([1]) +
          b"GET /api/v1/namespaces/prod%2Fpods/secrets/%2e%2e/x HTTP/1.1\r\nHost: K.Example.\r\n\r\n")
    for i, c in enumerate(COMMANDS):
        write("ssh_command", f"cmd-{i:02}", c.encode())
    # One byte picking the rule set (see fuzz_targets/json_mask.rs), then
    # the body; each body under every rule set.
    for i, body in enumerate(JSON_BODIES):
        for rules in range(7):
            write("json_mask", f"body-{i:02}-rules-{rules}", bytes([rules]) + body)


# Response bodies for json_mask: API lists, a Kubernetes Secret list and
# watch event, and the shapes the masker must read as a client does.
JSON_BODIES = [
    b'{"page":1,"total":2,"items":[{"id":0,"sku":"SKU-000000","email":"user0@example.com",'
    b'"price_cents":100,"in_stock":false,"tags":["hardware","bench"]},{"id":1,"email":null}]}\n',
    b'{"kind":"SecretList","apiVersion":"v1","items":[{"metadata":{"name":"db","annotations":'
    b'{"kubectl.kubernetes.io/last-applied-configuration":"{\\"data\\":{\\"pw\\":\\"czNj\\"}}"}},'
    b'"data":{"password":"czNjcmV0"},"type":"Opaque"}]}',
    b'{"type":"ADDED","object":{"kind":"Pod","metadata":{"name":"web-1","labels":{"app":"web"}},'
    b'"spec":{"containers":[{"name":"web","env":[{"name":"TOKEN","value":"Bearer abcdefgh12345678"}]}]}}}',
    b'{ "user" : {"\\u0065mail" :"ann\\u0040example.com", "phone":"+44 20 7946 0958"},\r\n'
    b'\t"a":[{"b":1e2},{"a":{"b":-0}}], "c":{"a":[true,false,null]}, "x":["\\ud83d\\ude00"] }',
    b'{"password":"s3cret","password":null,"data":{"k":"AKIAIOSFODNN7EXAMPLE"},"data":1}',
    b'"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"',
    b'[4111111111111111, 1.7976931348623157e308, 123456789012345678901234567890, "4111 1111 1111 1111"]',
    b'\xef\xbb\xbf{"email":"a@b.example"}',
    b'[' * 126 + b'{"email":"a@b.example"}' + b']' * 126,
]


if __name__ == "__main__":
    main()
