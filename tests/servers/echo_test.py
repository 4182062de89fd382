"""echo_server with real clients:
  1. 200 concurrent clients each send 64 KiB in random-sized pieces and get
     exactly their bytes back;
  2. a client that sends but never reads does not block the others;
  3. under `prlimit --nofile=32`, 80 clients connect: accept fails with
     EMFILE, the server stays near idle, and the clients in the backlog are
     served as the others leave;
  4. SIGINT and SIGTERM stop it with status 0."""
import asyncio
import os
import random
import signal
import socket
import time

from common import Server, check, ok, timed

SIZE = 64 * 1024


async def echo_client(port, rng, sem=None):
    data = rng.randbytes(SIZE)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send():
        pos = 0
        while pos < len(data):
            n = rng.randint(1, 8192)
            writer.write(data[pos:pos + n])
            pos += n
            await writer.drain()
            if rng.random() < 0.1:
                await asyncio.sleep(0.001)
        writer.write_eof()

    async def recv():
        got = bytearray()
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return bytes(got)
            got += chunk

    _, got = await asyncio.gather(send(), recv())
    writer.close()
    return got == data


async def many_clients(port, n, seed):
    rngs = [random.Random(seed + i) for i in range(n)]
    results = await asyncio.wait_for(asyncio.gather(*(echo_client(port, r) for r in rngs)), 60)
    return sum(results)


def test_concurrent():
    srv = Server("echo_server")
    try:
        good = asyncio.run(many_clients(srv.port, 200, 1))
        check(good == 200, "%d of 200 clients got their bytes back exactly" % good)
        ok("200 concurrent clients x 64 KiB echoed exactly")
        srv.stop(signal.SIGINT)
        ok("SIGINT: exit 0")
    finally:
        srv.kill()


def test_slow_reader():
    srv = Server("echo_server")
    try:
        # A client that writes and never reads: its socket buffers and then the
        # server's buffer for it fill up, and the server stops reading from it.
        hog = socket.create_connection(("127.0.0.1", srv.port))
        hog.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 5
        chunk = b"x" * 65536
        while time.monotonic() < deadline:
            try:
                sent += hog.send(chunk)
            except BlockingIOError:
                time.sleep(0.05)
                try:
                    sent += hog.send(chunk)
                except BlockingIOError:
                    break
        check(time.monotonic() < deadline, "the server kept reading from a client that never reads")
        t0 = time.monotonic()
        good = asyncio.run(many_clients(srv.port, 20, 1000))
        check(good == 20, "only %d of 20 clients echoed while one client did not read" % good)
        ok("a client that never reads (%d KiB stuck) does not block 20 others (%.2f s)"
           % (sent // 1024, time.monotonic() - t0))
        hog.close()
        srv.stop()
    finally:
        srv.kill()


async def fd_client(port, i, hold, served_at, t0):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    msg = b"ping %d\n" % i
    writer.write(msg)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(msg)), 30)
    served_at[i] = time.monotonic() - t0
    await asyncio.sleep(hold)
    writer.close()
    return got == msg


def test_out_of_fds():
    srv = Server("echo_server", wrap=["prlimit", "--nofile=32"])
    try:
        async def run():
            t0 = time.monotonic()
            served_at = {}
            tasks = [asyncio.ensure_future(fd_client(srv.port, i, 1.5, served_at, t0)) for i in range(80)]
            await asyncio.sleep(0.4)  # all connected; the first ones served and holding
            cpu0, w0 = srv.cpu_seconds(), time.monotonic()
            await asyncio.sleep(0.8)
            cpu = (srv.cpu_seconds() - cpu0) / (time.monotonic() - w0)
            first = len(served_at)
            results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            return results, cpu, first, max(served_at.values())

        results, cpu, first, last = asyncio.run(run())
        check(0 < first < 80, "%d of 80 served in the first round: the fd limit did not bite" % first)
        check(cpu < 0.2, "the server used %.0f%% CPU while accept() failed" % (cpu * 100))
        check(all(results), "%d of 80 clients served" % sum(results))
        out = srv.stop()
        check("out of fds" in out and "out of fds 0 " not in out, "no EMFILE seen: %r" % out)
        ok("--nofile=32, 80 clients: %d served at once, CPU %.1f%% while accept failed, all served by %.1f s"
           % (first, cpu * 100, last))
    finally:
        srv.kill()


os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
timed("echo_server: 200 concurrent clients", test_concurrent)
timed("echo_server: a client that never reads", test_slow_reader)
timed("echo_server: out of file descriptors", test_out_of_fds)
