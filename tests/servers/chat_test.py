"""chat_server with real clients: three clients, a line reaches the other two
(and not its sender); a client that never reads is dropped while the others
keep chatting."""
import socket
import threading
import time

from common import Server, check, ok, timed


class Reader:
    """A client whose lines are collected by a thread."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.lines = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                *done, buf = buf.split(b"\n")
                with self.cond:
                    self.lines += done
                    self.cond.notify_all()
        except OSError:
            pass

    def wait_for(self, line, timeout=10):
        with self.cond:
            return self.cond.wait_for(lambda: any(line in l for l in self.lines), timeout)

    def send(self, text):
        self.sock.sendall(text)


def test_chat():
    srv = Server("chat_server")
    try:
        a, b, c = Reader(srv.port), Reader(srv.port), Reader(srv.port)
        for r in (a, b, c):
            check(r.wait_for(b"* welcome"), "no welcome")
        check(a.wait_for(b" joined") and b.wait_for(b" joined"), "no join announcements")
        a.send(b"hello from a\n")
        check(b.wait_for(b"hello from a") and c.wait_for(b"hello from a"), "a's line did not reach b and c")
        time.sleep(0.2)
        check(not any(b"hello from a" in l for l in a.lines), "a got its own line back")
        ok("three clients: a line reaches the other two, not its sender")

        # A client that never reads, with a small receive buffer.
        d = socket.socket()
        d.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        d.connect(("127.0.0.1", srv.port))
        check(a.wait_for(b"joined", 5), "d did not join")
        t0 = time.monotonic()
        line = b"x" * 200
        for i in range(1500):  # 300 KB, far more than d's buffers hold, at a pace b and c keep up with
            a.send(b"%d %s\n" % (i, line))
            if i % 20 == 19:
                time.sleep(0.01)
        if not (b.wait_for(b"1499 x") and c.wait_for(b"1499 x")):
            srv.proc.send_signal(15)
            check(False, "b and c did not get all of a's lines: %r" % srv.proc.communicate(timeout=10)[0])
        a.send(b"still chatting\n")
        check(b.wait_for(b"still chatting") and c.wait_for(b"still chatting"), "the room stalled")
        took = time.monotonic() - t0
        # d was dropped: what it can still read ends in EOF.
        d.settimeout(5)
        got = b""
        while True:
            try:
                chunk = d.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        d.close()
        b.send(b"bye from b\n")
        check(a.wait_for(b"bye from b") and c.wait_for(b"bye from b"), "the room stalled after the drop")
        out = srv.stop()
        check("dropped" in out and "1 dropped" in out, "d was not dropped: %r" % out)
        ok("a client that never reads is dropped (%d bytes reached it); 1500 lines reached the others in %.2f s"
           % (len(got), took))
    finally:
        srv.kill()


timed("chat_server", test_chat)
