"""Every example server: --help prints usage and exits 0; a bad option prints
usage to stderr and exits 2."""
import os
import subprocess

from common import EXAMPLES, check, ok, timed


def test_options():
    for name in ("echo_server", "chat_server", "http_file_server", "multi_loop"):
        exe = os.path.join(EXAMPLES, name)
        r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=5)
        check(r.returncode == 0 and r.stdout.startswith("usage: " + name), "%s --help: %r" % (name, r))
        for bad in (["--bogus"], ["--port"], ["--port", "x"], ["--port", "70000"]):
            r = subprocess.run([exe] + bad, capture_output=True, text=True, timeout=5)
            check(r.returncode == 2 and r.stderr.startswith("usage: ") and r.stdout == "",
                  "%s %s: %r" % (name, bad, r))
    ok("--help exits 0; bad options print usage to stderr and exit 2 (4 servers)")


timed("options", test_options)
