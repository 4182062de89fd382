#!/bin/sh
# Vendoring checks: microloop must work when copied into someone else's tree.
#   1. single_include/microloop.hpp alone in an empty directory, with nothing
#      else on the include path, two translation units (catches non-inline
#      definitions), strict warnings, no exceptions, no RTTI: builds and runs.
#   2. single_include/microloop_core.hpp alone in the same way, linked with
#      nothing but the libc (no -pthread, no -lrt).
#   3. The include/ tree copied in the same way, and its core.hpp alone.
#   4. Every example (examples/*.cpp, copied with its local headers) builds
#      against a folder holding only the copied single header, strictly.
# Run from the top of the source tree. CXX selects the compiler (default c++);
# RUNNER runs the program (e.g. qemu-arm for a cross compiler).
set -eu
src=$(pwd)
test -f "$src/single_include/microloop.hpp" || { echo "run from the top of the microloop tree" >&2; exit 1; }
CXX=${CXX:-c++}
RUNNER=${RUNNER:-}
STRICT="-Wall -Wextra -Wpedantic -Werror -Wshadow -fno-exceptions -fno-rtti"
work=$(mktemp -d "${TMPDIR:-/tmp}/microloop-vendor.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

write_program() { # $1: directory, $2: include line
    cat >"$1/main.cpp" <<PROGRAM
$2
#include <stdio.h>
#include <unistd.h>

int second_tu_timers(); // second.cpp

int main() {
    using namespace std::chrono;
    static microloop::loop<4, 4> loop;
    static int got = 0;
    int p[2];
    if (pipe(p) != 0) return 1;
    microloop::io_handle rd = loop.watch(p[0], microloop::readable, [](microloop::io_event ev) {
        char c;
        if (read(ev.fd, &c, 1) == 1) got = c;
        loop.unwatch(ev.handle);
    });
    microloop::timer_handle wr = loop.after(milliseconds(2), [](microloop::timer_event) {});
    if (!rd || !wr || write(p[1], "x", 1) != 1 || loop.run()) return 1;
    close(p[0]);
    close(p[1]);
    int n = second_tu_timers();
    printf("vendored microloop %d.%d.%d: read '%c', second unit fired %d\n", MICROLOOP_VERSION_MAJOR,
           MICROLOOP_VERSION_MINOR, MICROLOOP_VERSION_PATCH, got, n);
    return got == 'x' && n == 2 ? 0 : 1;
}
PROGRAM
    cat >"$1/second.cpp" <<PROGRAM
$2

int second_tu_timers() {
    static microloop::loop<2, 4> loop;
    static int fired = 0;
    loop.after(std::chrono::milliseconds(1), [](microloop::timer_event) { ++fired; });
    loop.after(std::chrono::milliseconds(2), [](microloop::timer_event) { ++fired; });
    return loop.run() ? -1 : fired;
}
PROGRAM
}

build_and_run() { # $1: directory, $2: what, $3: link flags (default -pthread -lrt)
    for std in c++11 c++20; do
        # shellcheck disable=SC2086 # the flags are words
        (cd "$1" && $CXX -std=$std $STRICT main.cpp second.cpp -o prog ${3--pthread -lrt})
        $RUNNER "$1/prog"
    done
    echo "  vendor: $2: ok"
}

mkdir "$work/single"
cp "$src/single_include/microloop.hpp" "$work/single/"
write_program "$work/single" '#include "microloop.hpp"'
build_and_run "$work/single" "single header alone"

mkdir "$work/core"
cp "$src/single_include/microloop_core.hpp" "$work/core/"
write_program "$work/core" '#include "microloop_core.hpp"'
build_and_run "$work/core" "core single header alone, libc only" ""

mkdir "$work/tree"
cp -R "$src/include" "$work/tree/microloop-include"
write_program "$work/tree" '#include "microloop-include/microloop.hpp"'
build_and_run "$work/tree" "include/ tree copied"
write_program "$work/tree" '#include "microloop-include/microloop/core.hpp"'
build_and_run "$work/tree" "include/ tree copied, microloop/core.hpp, libc only" ""

mkdir "$work/examples" "$work/examples-include"
cp "$src/single_include/microloop.hpp" "$work/examples-include/"
cp "$src"/examples/*.cpp "$src"/examples/*.hpp "$work/examples/"
for ex in "$work"/examples/*.cpp; do
    name=$(basename "$ex" .cpp)
    $CXX -std=c++11 $STRICT -I"$work/examples-include" "$ex" -o "$work/examples/$name" -pthread -lrt
done
echo "  vendor: every example against the single header alone: ok ($(ls "$work"/examples/*.cpp | wc -l) examples)"
