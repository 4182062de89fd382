"""http_file_server with real clients (curl, wrk, raw sockets):
byte-exact downloads (one, then 20 in parallel), ranges, the root as a jail,
malformed and oversized requests, keep-alive, pipelining and HTTP/1.0, a full
connection table (503), a slowloris client, and wrk without errors. The
timeouts for idle and slow clients: http_timeouts_test.py."""
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from common import Server, check, fail, ok, timed

tmp = tempfile.mkdtemp(prefix="microloop-http-")
root = os.path.join(tmp, "www")
os.makedirs(os.path.join(root, "sub"))
os.makedirs(os.path.join(tmp, "outside"))
rng = random.Random(7)
BIG = rng.randbytes(5 * 1024 * 1024)
SECRET = b"the secret outside the root\n"
with open(os.path.join(root, "big.bin"), "wb") as f:
    f.write(BIG)
with open(os.path.join(root, "4k.html"), "wb") as f:
    f.write(b"x" * 4096)
with open(os.path.join(root, "index.html"), "wb") as f:
    f.write(b"<h1>index</h1>\n")
with open(os.path.join(root, "sub", "index.html"), "wb") as f:
    f.write(b"sub index\n")
with open(os.path.join(tmp, "outside", "secret.txt"), "wb") as f:
    f.write(SECRET)
os.symlink("../outside/secret.txt", os.path.join(root, "link.txt"))
os.symlink("../outside", os.path.join(root, "linkdir"))
os.symlink("/etc/passwd", os.path.join(root, "passwd"))
os.symlink("index.html", os.path.join(root, "inlink.html"))  # links that stay inside the root are served
os.symlink("sub", os.path.join(root, "sublink"))
os.symlink("../index.html", os.path.join(root, "sub", "up.html"))
os.mkfifo(os.path.join(root, "fifo"))  # not a regular file: 404, and opening it must not block the server

srv = Server("http_file_server", ["--root", root])
base = "http://127.0.0.1:%d" % srv.port


def curl(*args, timeout=30):
    return subprocess.run(["curl", "-s", "--max-time", "20"] + list(args), capture_output=True, timeout=timeout)


def raw(data, timeout=5, shut=True):
    """Sends data on a fresh connection, returns everything read until EOF."""
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
    try:
        try:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed first (a reset: ENOTCONN, EPIPE, ECONNRESET)
            pass
        got = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        return got
    finally:
        s.close()


def status_of(resp):
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", resp)
    return int(m.group(1)) if m else None


def still_serving():
    r = curl("-o", "-", base + "/index.html")
    check(r.stdout == b"<h1>index</h1>\n", "the server stopped serving")


def test_downloads():
    out = os.path.join(tmp, "dl")
    r = curl("-o", out, "-w", "%{http_code}", base + "/big.bin")
    check(r.stdout == b"200" and open(out, "rb").read() == BIG, "5 MiB download not byte-exact: %r" % r.stdout)
    procs = [subprocess.Popen(["curl", "-s", "--max-time", "30", "-o", "%s.%d" % (out, i), base + "/big.bin"])
             for i in range(20)]
    for p in procs:
        check(p.wait(timeout=40) == 0, "a parallel curl failed")
    for i in range(20):
        check(open("%s.%d" % (out, i), "rb").read() == BIG, "parallel download %d not byte-exact" % i)
    ok("5 MiB byte-exact, alone and 20 in parallel")


def test_ranges():
    for spec, lo, hi in (("100-199", 100, 200), ("5000000-", 5000000, len(BIG)), ("-1000", len(BIG) - 1000, len(BIG)),
                         ("0-0", 0, 1), ("5242000-9999999", 5242000, len(BIG))):
        r = curl("-D", "-", "-o", os.path.join(tmp, "range"), "--range", spec, base + "/big.bin")
        body = open(os.path.join(tmp, "range"), "rb").read()
        check(b" 206 " in r.stdout.split(b"\r\n")[0], "--range %s: %r" % (spec, r.stdout[:40]))
        check(b"Content-Range: bytes %d-%d/%d" % (lo, hi - 1, len(BIG)) in r.stdout, "--range %s: Content-Range" % spec)
        check(body == BIG[lo:hi], "--range %s: wrong bytes" % spec)
    r = curl("-o", "/dev/null", "-w", "%{http_code}", "--range", "6000000-", base + "/big.bin")
    check(r.stdout == b"416", "range past the end: %r" % r.stdout)
    ok("ranges a-b, a-, -n exact; past the end 416")


def test_jail():
    paths = ["/../outside/secret.txt", "/%2e%2e/outside/secret.txt", "/%2E%2E%2Foutside%2Fsecret.txt",
             "/..%2foutside/secret.txt", "/sub/../../outside/secret.txt", "//etc/passwd", "/%2fetc%2fpasswd",
             "/link.txt", "/linkdir/secret.txt", "/passwd", "/sub/%2e%2e/%2e%2e/outside/secret.txt",
             "/a%00b", "/index.html%00.txt", "/%2e%2e%5coutside%5csecret.txt"]
    for p in paths:
        r = curl("--path-as-is", "-o", "-", "-w", "\n%{http_code}", base + p)
        body, code = r.stdout.rsplit(b"\n", 1)
        check(code in (b"400", b"403", b"404"), "%s: %s" % (p, code))
        check(SECRET not in body and b"root:" not in body, "%s served a file outside the root" % p)
    for target in (b"../outside/secret.txt", b"/etc/passwd", b"http://x/../outside/secret.txt", b"*"):
        resp = raw(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        check(status_of(resp) in (400, 403, 404) and SECRET not in resp and b"root:" not in resp,
              "raw target %r: %r" % (target, resp[:60]))
    for p, want in (("/inlink.html", b"<h1>index</h1>\n"), ("/sublink/", b"sub index\n"),
                    ("/sublink/index.html", b"sub index\n"), ("/sub/up.html", b"<h1>index</h1>\n")):
        r = curl("-o", "-", "-w", "\n%{http_code}", base + p)
        check(r.stdout == want + b"\n200", "%s, a link inside the root: %r" % (p, r.stdout))
    r = curl("-o", "/dev/null", "-w", "%{http_code}", base + "/fifo")
    check(r.stdout == b"404", "a FIFO: %r" % r.stdout)
    ok("%d traversal paths and 4 raw targets refused (400/403/404), never served; links inside the root served, "
       "a FIFO 404" % len(paths))


def test_malformed():
    cases = [(rng.randbytes(300) + b"\r\n\r\n", (400, 414, 431)), (b"\x00\x01\x02garbage\r\n\r\n", (400,)),
             (b"GET / HTTP/9.9\r\n\r\n", (400,)), (b"GET /\r\n\r\n", (400,)), (b"GET / HTTP/1.1\r\n bad\r\n\r\n", (400,)),
             (b"GET /" + b"a" * (1024 * 1024) + b" HTTP/1.1\r\n\r\n", (414,)),
             (b"GET / HTTP/1.1\r\n" + b"X-Pad: yyyyyyyy\r\n" * 400 + b"\r\n", (431,)),
             (b"DELETE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", (405,))]
    for data, want in cases:
        resp = raw(data, timeout=10)
        check(status_of(resp) in want, "%r...: %r" % (data[:30], resp[:60]))
        if status_of(resp) == 405:
            check(b"Allow: GET, HEAD" in resp, "405 without Allow")
        still_serving()
    ok("garbage, bad versions, folding, a 1 MiB request line (414), 6 KiB of headers (431), DELETE (405)")


def test_keepalive_pipelining():
    req = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\nHEAD /4k.html HTTP/1.1\r\nHost: x\r\n\r\n" \
          b"GET /sub/ HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    resp = raw(req, shut=False)  # the server closes after the last one
    codes = [int(c) for c in re.findall(rb"HTTP/1\.1 (\d{3})", resp)]
    check(codes == [200, 200, 200, 404], "pipelined answers %r" % codes)
    check(resp.index(b"<h1>index") < resp.index(b"sub index"), "pipelined answers out of order")
    check(b"x" * 100 not in resp, "HEAD sent a body")
    resp = raw(b"GET /index.html HTTP/1.0\r\n\r\n", shut=False)
    check(status_of(resp) == 200 and b"Connection: close" in resp and resp.endswith(b"<h1>index</h1>\n"),
          "HTTP/1.0: %r" % resp[-80:])
    r = curl("-o", "/dev/null", "-o", "/dev/null", "-w", "%{num_connects} ", base + "/4k.html", base + "/index.html")
    check(r.stdout.split() == [b"1", b"0"], "curl did not reuse the connection: %r" % r.stdout)
    ok("4 pipelined requests answered in order, Connection: close honoured, 1.0 closes, keep-alive reused")


def test_full_table():
    held = []
    try:
        for _ in range(128):
            held.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
        time.sleep(0.3)
        resp = raw(b"GET / HTTP/1.1\r\n\r\n")
        check(status_of(resp) == 503, "129th connection: %r" % resp[:40])
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    still_serving()
    ok("129th connection gets 503; service resumes when connections close")


def test_slowloris():
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    t0 = time.monotonic()
    s.sendall(b"GET / HTTP/1.1\r\n")
    closed = None
    while time.monotonic() - t0 < 9:
        try:
            s.sendall(b"X")
            s.settimeout(0.5)
            if s.recv(100) == b"":
                closed = time.monotonic() - t0
                break
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            closed = time.monotonic() - t0
            break
    s.close()
    check(closed is not None and closed < 7, "a slowloris client was not cut off (%s)" % closed)
    ok("a client trickling its head is cut off after %.1f s" % closed)


def test_replaced():
    """Files are kept open for a second: a file replaced or removed is served
    as it is now once that has passed."""
    path = os.path.join(root, "changing.txt")
    with open(path, "wb") as f:
        f.write(b"old\n")
    check(curl("-o", "-", base + "/changing.txt").stdout == b"old\n", "first version")
    with open(path + ".new", "wb") as f:
        f.write(b"new, longer\n")
    os.rename(path + ".new", path)
    t0 = time.monotonic()
    while curl("-o", "-", base + "/changing.txt").stdout != b"new, longer\n":
        check(time.monotonic() - t0 < 20, "a replaced file still served the old way after 20 s")
        time.sleep(0.2)
    replaced = time.monotonic() - t0
    os.unlink(path)
    t0 = time.monotonic()
    while curl("-o", "/dev/null", "-w", "%{http_code}", base + "/changing.txt").stdout != b"404":
        check(time.monotonic() - t0 < 20, "a removed file still served after 20 s")
        time.sleep(0.2)
    ok("a replaced file served anew after %.1f s, a removed one 404 after %.1f s"
       % (replaced, time.monotonic() - t0))


def test_wrk():
    r = subprocess.run(["wrk", "-t2", "-c100", "-d3s", "--timeout", "5s", base + "/4k.html"],
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 0, "wrk failed: %s" % r.stderr)
    check("Non-2xx" not in r.stdout and "Socket errors" not in r.stdout, "wrk saw errors:\n" + r.stdout)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout).group(1)
    ok("wrk -c100 3 s: no non-2xx, no socket errors, %s requests/s" % rps)


try:
    timed("http_file_server: downloads", test_downloads)
    timed("http_file_server: ranges", test_ranges)
    timed("http_file_server: the root is a jail", test_jail)
    timed("http_file_server: malformed and oversized requests", test_malformed)
    timed("http_file_server: keep-alive, pipelining, HTTP/1.0", test_keepalive_pipelining)
    timed("http_file_server: full table", test_full_table)
    timed("http_file_server: slowloris", test_slowloris)
    timed("http_file_server: replaced and removed files", test_replaced)
    timed("http_file_server: wrk", test_wrk)
    out = srv.stop()
    print("  " + out.strip().splitlines()[-1])
finally:
    srv.kill()
    shutil.rmtree(tmp)
