"""Helpers for the server tests: start an example server, learn its port from
its first stdout line, stop it with a signal and check it exits 0.

Every test is bounded: each server gets a deadline, each client a timeout."""
import os
import signal
import subprocess
import sys
import time

BUILD = os.environ.get("BUILD", "build")
EXAMPLES = os.path.join(BUILD, "examples")


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def ok(msg):
    print("  ok: " + msg, flush=True)


class Server:
    """An example server on 127.0.0.1, port 0. `wrap` prefixes the command
    (e.g. ["prlimit", "--nofile=32"])."""

    def __init__(self, name, args=(), wrap=(), cwd=None):
        self.name = name
        cmd = list(wrap) + [os.path.join(os.path.abspath(EXAMPLES), name), "--port", "0"] + list(args)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                                     text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.proc.kill()
            fail("%s: first line %r, stderr %r" % (name, line, self.proc.stderr.read()))
        self.addr, port = line.split()[2].rsplit(":", 1)
        self.port = int(port)

    def cpu_seconds(self):
        """User + system CPU time the server has used so far."""
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Signal the server; it must exit 0 in time. Returns its stdout after the first line."""
        if not self.alive():
            fail("%s died early (status %s): %s" % (self.name, self.proc.returncode, self.proc.stderr.read()))
        self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            fail("%s did not exit within %d s of %s" % (self.name, timeout, sig))
        check(self.proc.returncode == 0, "%s exited %d: %s" % (self.name, self.proc.returncode, err))
        return out

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()


def timed(name, fn):
    t0 = time.monotonic()
    fn()
    print("%s: passed in %.1f s" % (name, time.monotonic() - t0), flush=True)
