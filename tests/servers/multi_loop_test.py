"""multi_loop with real clients: 60 concurrent clients echo 32 KiB each
exactly; the connections land on more than one worker loop (the server
reports which served how many); SIGTERM stops every loop and it exits 0."""
import asyncio
import random
import re

from common import Server, check, ok, timed


async def client(port, rng):
    data = rng.randbytes(32 * 1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send():
        pos = 0
        while pos < len(data):
            n = rng.randint(1, 4096)
            writer.write(data[pos:pos + n])
            pos += n
            await writer.drain()
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


def test_multi_loop():
    srv = Server("multi_loop", ["--workers", "3"])
    try:
        async def run():
            return await asyncio.wait_for(
                asyncio.gather(*(client(srv.port, random.Random(i)) for i in range(60))), 60)

        results = asyncio.run(run())
        check(all(results), "%d of 60 clients echoed exactly" % sum(results))
        out = srv.stop()
        per_worker = [int(n) for n in re.findall(r"worker \d+: (\d+) connections", out)]
        check(len(per_worker) == 3 and sum(per_worker) == 60, "report: %r" % out)
        check(sum(1 for n in per_worker if n > 0) > 1, "all connections on one worker: %r" % per_worker)
        ok("60 clients echoed exactly across 3 worker loops %r; SIGTERM: exit 0" % per_worker)
    finally:
        srv.kill()


timed("multi_loop", test_multi_loop)
