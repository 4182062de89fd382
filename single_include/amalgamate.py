#!/usr/bin/env python3
"""Make the single-header editions of microloop from include/.

    single_include/amalgamate.py include/microloop.hpp single_include/microloop.hpp
    single_include/amalgamate.py --core include/microloop/core.hpp single_include/microloop_core.hpp

It lives next to what it makes; `make single_include` runs it and `make
check-amalgamation` checks that its output is the checked-in file.

Starting from the umbrella header, every `#include "..."` that names a project
header (resolved against the including file's directory, then include/) is
replaced by that header's text, the first time it is met; later includes of
the same header are dropped. Because a header is inlined where it is first
included, each one appears after everything it includes: dependency order.
A header included under an #if (an opt-in module such as AIO) stays under
that #if. Headers the umbrella never includes follow it, in name order, so
the one file holds every module (not the adapters under microloop/adapters/,
which each go with a library of their own). With --core, the edition is the
core alone: what core.hpp includes, and nothing else. System includes (`#include <...>`) are kept
as they are. The umbrella's own text, the usage guide at its top included,
comes first after a banner. Every header starts with an SPDX licence line;
the banner carries one SPDX line first, so it stays the output's first line,
and the headers' own SPDX lines are not repeated inside.

The output depends only on the input files: no timestamp, no absolute path,
so `make check-amalgamation` can compare it byte for byte.
"""

import os
import re
import sys

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')
SPDX_RE = re.compile(r"^//\s*SPDX-License-Identifier:\s*(\S+)\s*$")
LICENSE_ID = "MIT"
BANNER = (
    "// SPDX-License-Identifier: %s\n"
    "// microloop %ssingle-header edition: generated from include/ by single_include/amalgamate.py.\n"
    "// Do not edit: change the files in include/ and run `make single_include`.\n"
    "//\n"
)


def read_lines(path):
    with open(path, "r", encoding="utf-8", newline="") as f:
        text = f.read()
    if "\r" in text:
        sys.exit("amalgamate: %s has CR line endings" % path)
    if not text.endswith("\n"):
        text += "\n"
    return text.splitlines(True)


COND_OPEN_RE = re.compile(r"^\s*#\s*if(n?def)?\b")
COND_CLOSE_RE = re.compile(r"^\s*#\s*endif\b")
GUARD_RE = re.compile(r"^\s*#\s*ifndef\s+(\w+)")
DEFINE_RE = re.compile(r"^\s*#\s*define\s+(\w+)")


class Amalgamator:
    def __init__(self, root):
        self.root = os.path.normpath(root)
        self.done = set()  # inlined where it is always compiled
        self.seen = set()  # inlined anywhere, perhaps under an #if
        self.stack = []

    def name(self, path):
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def resolve(self, including, target):
        for base in (os.path.dirname(including), self.root):
            path = os.path.normpath(os.path.join(base, target))
            if os.path.isfile(path):
                return path
        sys.exit('amalgamate: %s: #include "%s" names no file in %s' % (self.name(including), target, self.root))

    def expand(self, path, out, conditional=False, top=False):
        """Inline `path`. A header included under an #if (an opt-in module) is
        inlined there, and again where it is next included unconditionally:
        its include guard makes the second copy harmless, and the header is
        never lost because the condition was false."""
        if path in self.stack:
            chain = " -> ".join(self.name(p) for p in self.stack + [path])
            sys.exit("amalgamate: include cycle: " + chain)
        self.seen.add(path)
        if not conditional:
            self.done.add(path)
        self.stack.append(path)
        if not top:
            out.append("\n// ---- begin %s " % self.name(path) + "-" * max(4, 60 - len(self.name(path))) + "\n")
        lines = read_lines(path)
        # The SPDX line is the header's first line; the banner has the one
        # the single header needs. A header under another licence is refused.
        m = SPDX_RE.match(lines[0]) if lines else None
        if not m:
            sys.exit("amalgamate: %s: the first line is not an SPDX-License-Identifier line" % self.name(path))
        if m.group(1) != LICENSE_ID:
            sys.exit("amalgamate: %s: licence %s, expected %s" % (self.name(path), m.group(1), LICENSE_ID))
        lines = lines[1:]
        depth, guard = 0, None
        for i, line in enumerate(lines):
            if COND_OPEN_RE.match(line):
                g = GUARD_RE.match(line)
                nxt = lines[i + 1] if i + 1 < len(lines) else ""
                d = DEFINE_RE.match(nxt)
                if guard is None and g and d and g.group(1) == d.group(1):
                    guard = depth + 1  # the include guard is no condition
                depth += 1
            elif COND_CLOSE_RE.match(line):
                depth -= 1
            m = INCLUDE_RE.match(line)
            if not m:
                out.append(line)
                continue
            target = self.resolve(path, m.group(1))
            cond = conditional or depth > (1 if guard == 1 else 0)
            if target in self.done or (cond and target in self.seen):
                continue
            self.expand(target, out, cond)
        if not top:
            out.append("// ---- end %s " % self.name(path) + "-" * max(4, 62 - len(self.name(path))) + "\n\n")
        self.stack.pop()

    def expand_rest(self, out):
        """Headers the umbrella does not include (modules included on their
        own) follow it, so the one file holds
        the whole library."""
        for directory, _, files in sorted(os.walk(self.root)):
            if "adapters" in os.path.relpath(directory, self.root).split(os.sep):
                continue
            for f in sorted(files):
                path = os.path.normpath(os.path.join(directory, f))
                if f.endswith(".hpp") and path not in self.seen:
                    self.expand(path, out)


def main(argv):
    core = len(argv) == 4 and argv[1] == "--core"
    if len(argv) != 3 and not core:
        sys.exit("usage: single_include/amalgamate.py [--core] include/microloop.hpp single_include/microloop.hpp")
    src, dst = argv[-2], argv[-1]
    # The root is include/: the umbrella's folder, or for the core (in
    # include/microloop/) the folder above it.
    root = os.path.dirname(src) or "."
    if core:
        root = os.path.dirname(root) or "."
    amalgamator = Amalgamator(root)
    out = [BANNER % (LICENSE_ID, "core " if core else "")]
    amalgamator.expand(os.path.normpath(src), out, top=True)
    if not core:
        amalgamator.expand_rest(out)
    text = "".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)  # no pile-up of blank lines at the seams
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    # Written through a temporary file so an interrupted run never leaves half a header.
    tmp = dst + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, dst)


if __name__ == "__main__":
    main(sys.argv)
