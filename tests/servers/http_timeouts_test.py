"""http_file_server's idle keep-alive timeout and send timeout, with real
clients, on a server started with short timeouts (--idle-timeout,
--send-timeout) so that the test does not wait for the defaults:

  - an idle keep-alive connection is closed; one that keeps asking is not;
  - clients that ask for a large file and never read (more of them than
    the server has chunk buffers) are dropped after the send timeout, and
    others are served in full meanwhile;
  - a slow reader that keeps making progress is not dropped.

Every assertion is about what happens, never how soon: the waits are
bounded by generous limits, for a loaded machine."""
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time

from common import Server, check, ok, timed

# Short, but long against a stall of a loaded machine: a test fails only if
# the client itself is held up for most of a timeout.
IDLE_MS = 3000
SEND_MS = 3000

tmp = tempfile.mkdtemp(prefix="microloop-http-timeouts-")
root = os.path.join(tmp, "www")
os.makedirs(root)
rng = random.Random(11)
BIG = rng.randbytes(5 * 1024 * 1024)
with open(os.path.join(root, "big.bin"), "wb") as f:
    f.write(BIG)
HUGE_LEN = 64 * 1024 * 1024  # never read: more than any socket buffers hold
with open(os.path.join(root, "huge.bin"), "wb") as f:
    f.truncate(HUGE_LEN)
with open(os.path.join(root, "index.html"), "wb") as f:
    f.write(b"<h1>index</h1>\n")

srv = Server("http_file_server", ["--root", root, "--idle-timeout", str(IDLE_MS), "--send-timeout", str(SEND_MS)])
base = "http://127.0.0.1:%d" % srv.port


def connect(rcvbuf=None, timeout=30):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", srv.port))
    return s


def read_response(s, pending=b""):
    """One whole response (Content-Length framing) from s; returns (head, body, rest)."""
    data = pending
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        check(chunk, "connection closed before a whole head: %r" % data[:80])
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0])
    while len(rest) < length:
        chunk = s.recv(65536)
        check(chunk, "connection closed after %d of %d bytes" % (len(rest), length))
        rest += chunk
    return head, rest[:length], rest[length:]


def closed_by_server(s, limit):
    """Waits up to `limit` seconds for EOF (or a reset) on s; True if it came."""
    s.settimeout(limit)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def tcp_state(local_port, remote_port):
    """The state (hex, as in /proc/net/tcp) of the server's side of a connection, or None."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            lport = int(fields[1].split(":")[1], 16)
            rport = int(fields[2].split(":")[1], 16)
            if lport == local_port and rport == remote_port:
                return fields[3]
    return None


def test_idle():
    s = connect()
    t0 = time.monotonic()
    s.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body, _ = read_response(s)
    check(head.startswith(b"HTTP/1.1 200") and body == b"<h1>index</h1>\n", "first answer: %r" % head[:40])
    check(closed_by_server(s, 30), "an idle keep-alive connection was still open after 30 s")
    idle = time.monotonic() - t0
    s.close()
    # A connection that asks again and again, more often than the timeout, for
    # longer than it, stays open.
    s = connect()
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 2 * IDLE_MS / 1000:
        s.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body, _ = read_response(s)
        check(head.startswith(b"HTTP/1.1 200"), "request %d on a busy keep-alive connection: %r" % (n, head[:40]))
        n += 1
        time.sleep(0.1)
    s.close()
    ok("an idle keep-alive connection closed (after %.1f s; timeout %.1f s); %d requests over %.1f s kept one open"
       % (idle, IDLE_MS / 1000, n, 2 * IDLE_MS / 1000))


def test_send_timeout():
    stuck = []
    for _ in range(12):  # more than the server's chunk buffers
        s = connect(rcvbuf=16384)
        s.sendall(b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        stuck.append(s)
    t0 = time.monotonic()
    time.sleep(0.5)  # their answers fill the socket buffers, then stall
    out = os.path.join(tmp, "dl")
    for i in range(3):  # others are served in full meanwhile
        r = subprocess.run(["curl", "-s", "--max-time", "20", "-o", out, "-w", "%{http_code}", base + "/big.bin"],
                           capture_output=True, timeout=30)
        check(r.stdout == b"200" and open(out, "rb").read() == BIG,
              "download %d while 12 clients stall: %r" % (i, r.stdout))
    served = time.monotonic() - t0
    # The server's side of each stuck connection closes: FIN_WAIT1 (04) with
    # its unsent data still queued, or later states. Then the client, reading
    # at last, gets less than the length promised, and the end.
    ports = [s.getsockname()[1] for s in stuck]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = [tcp_state(srv.port, p) for p in ports]
        if all(st not in ("01",) for st in states):  # none ESTABLISHED any more
            break
        time.sleep(0.1)
    dropped = time.monotonic() - t0
    check(all(st != "01" for st in states), "stalled clients still connected after 60 s: %r" % states)
    for s in stuck:
        got = 0
        s.settimeout(30)
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
        except ConnectionResetError:
            pass
        check(got < HUGE_LEN, "a stalled client got the whole file (%d bytes): it was not dropped" % got)
        s.close()
    ok("12 clients that never read dropped (all within %.1f s; send timeout %.1f s); 3 x 5 MiB served meanwhile "
       "in %.1f s" % (dropped, SEND_MS / 1000, served))


def test_slow_reader():
    s = connect(rcvbuf=32768)
    s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    t0 = time.monotonic()
    data = b""
    while True:
        chunk = s.recv(32768)
        if not chunk:
            break
        data += chunk
        time.sleep(0.04)
    took = time.monotonic() - t0
    s.close()
    check(data.endswith(BIG) and b"200 OK" in data[:20], "a slow reader got %d bytes" % len(data))
    # At most 32 KiB a read, 40 ms after each: at least 6.4 s, so the
    # answer outlasted the send timeout.
    check(took > SEND_MS / 1000, "the slow read took %.1f s, not more than the send timeout" % took)
    ok("a slow reader (32 KiB every 40 ms) got 5 MiB in %.1f s without being dropped (send timeout %.1f s)"
       % (took, SEND_MS / 1000))


try:
    timed("http_file_server: idle keep-alive timeout", test_idle)
    timed("http_file_server: send timeout", test_send_timeout)
    timed("http_file_server: slow reader", test_slow_reader)
    out = srv.stop()
    print("  " + out.strip().splitlines()[-1])
finally:
    srv.kill()
    shutil.rmtree(tmp)
