#!/bin/sh
# tests/bench/footprint.sh - `make size`: what microloop adds to a static -Os binary,
# next to libev and libevent doing the same job, for the host and for armhf.
#
# Every program (tests/bench/footprint/) watches stdin, runs a repeating 1 s timer
# and, from the "fd+timer+signal" row on, stops on SIGTERM. The floor is the
# same program written by hand on select(). All are built alike:
#   -Os -ffunction-sections -fdata-sections -Wl,--gc-sections -static -s
# (C++ also -fno-exceptions -fno-rtti), and `size` reads text/data/bss.
# "over floor" = text - the floor's text for the same feature set.
#
# Environment: CXX, CC (host compilers), CROSS_COMPILE (prefix for the first
# target instead of the host), ARMHF (prefix of the armhf target, default
# arm-linux-gnueabihf-; empty to skip), FETCH_PEERS=0 to never download the
# armhf libev/libevent packages, BUILD / BENCH_OUT (output directory).
# Raw numbers go to $OUT/footprint.txt. Exit status 1 if microloop's
# fd+timer+signal program is more than FOOTPRINT_MAX_KIB (default 8) KiB of
# text over the floor on armhf (arm-linux-gnueabihf), or could not be built.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SRC=$ROOT/tests/bench/footprint
BUILD=${BUILD:-build}
OUT=${BENCH_OUT:-$BUILD/bench}
mkdir -p "$OUT/footprint" || exit 1
OUT=$(cd "$OUT" && pwd)
RAW=$OUT/footprint.txt
: >"$RAW"
ARMHF=${ARMHF-arm-linux-gnueabihf-}
FETCH_PEERS=${FETCH_PEERS:-1}
CROSS_COMPILE=${CROSS_COMPILE:-}

# -fmacro-prefix-map: assert()'s file names are relative, so the sizes do not
# depend on where the checkout lies (CI's clone is elsewhere).
FLAGS="-Os -ffunction-sections -fdata-sections -Wl,--gc-sections -static -s -fmacro-prefix-map=$ROOT/="
CXXONLY="-std=c++11 -fno-exceptions -fno-rtti"

note() { echo "footprint: $*" >&2; }

# text data bss of a binary, or "- - -"
sizes() {
    "$1size" "$2" 2>/dev/null | awk 'NR == 2 { print $1, $2, $3; found = 1 } END { if (!found) print "- - -" }'
}

# armhf libev/libevent static libraries: installed (:armhf packages), or
# unpacked from Debian's packages without installing anything.
armhf_peer_root() {
    if [ -f /usr/lib/arm-linux-gnueabihf/libev.a ] && [ -f /usr/lib/arm-linux-gnueabihf/libevent_core.a ]; then
        echo /
        return 0
    fi
    dir=$OUT/footprint/peers-armhf
    if [ -f "$dir/usr/lib/arm-linux-gnueabihf/libev.a" ]; then
        echo "$dir"
        return 0
    fi
    [ "$FETCH_PEERS" = 1 ] || return 1
    command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 || return 1
    dpkg --print-foreign-architectures 2>/dev/null | grep -qx armhf || return 1
    mkdir -p "$dir/debs" || return 1
    (cd "$dir/debs" && timeout 120 apt-get download libev-dev:armhf libevent-dev:armhf) >"$dir/fetch.log" 2>&1 ||
        return 1
    for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir" || return 1; done
    [ -f "$dir/usr/lib/arm-linux-gnueabihf/libev.a" ] && echo "$dir"
}

# build_target LABEL PREFIX PEER_ROOT
build_target() {
    label=$1 pre=$2 peers=$3
    if [ -n "$pre" ]; then cxx=${pre}g++ cc=${pre}gcc; else cxx=${CXX:-g++} cc=${CC:-cc}; fi
    if ! command -v "$cxx" >/dev/null 2>&1; then
        note "$label: $cxx not found, skipped"
        return
    fi
    d=$OUT/footprint/$label
    mkdir -p "$d"
    inc="-I$ROOT/include"
    # The floor (built as C++ with the same flags, so the difference is microloop's code alone)
    $cxx $FLAGS $CXXONLY -x c++ -o "$d/floor" "$SRC/floor.c" || note "$label: floor failed"
    $cxx $FLAGS $CXXONLY -x c++ -DWITH_SIGNAL -o "$d/floor-sig" "$SRC/floor.c" || note "$label: floor-sig failed"
    $cxx $FLAGS $CXXONLY -pthread -x c++ -DWITH_SIGNAL -DWITH_AIO -o "$d/floor-aio" "$SRC/floor.c" -lrt ||
        note "$label: floor-aio failed"
    $cxx $FLAGS $CXXONLY $inc -o "$d/microloop" "$SRC/microloop.cpp" || note "$label: microloop failed"
    if [ -f "$ROOT/include/microloop/signal.hpp" ]; then
        $cxx $FLAGS $CXXONLY $inc -DWITH_SIGNAL -o "$d/microloop-sig" "$SRC/microloop.cpp" ||
            note "$label: microloop-sig failed"
        if [ -f "$ROOT/include/microloop/backend/epoll.hpp" ]; then
            $cxx $FLAGS $CXXONLY $inc -DWITH_SIGNAL -DMICROLOOP_BACKEND=epoll -o "$d/microloop-sig-epoll" \
                "$SRC/microloop.cpp" || note "$label: microloop-sig-epoll failed"
        fi
    fi
    if [ -f "$ROOT/include/microloop/aio.hpp" ] && [ -f "$ROOT/include/microloop/continuation.hpp" ]; then
        $cxx $FLAGS $CXXONLY -pthread $inc -DWITH_SIGNAL -DWITH_AIO -o "$d/microloop-aio" "$SRC/microloop.cpp" -lrt ||
            note "$label: microloop-aio failed"
    fi
    $cxx $CXXONLY $inc -c -o "$d/loopsize.o" "$SRC/loopsize.cpp" 2>/dev/null &&
        echo "$label sizeof_loop $((0x$(${pre}nm -S "$d/loopsize.o" | awk '$4 == "microloop_default_loop_size" { print $2 }')))" >>"$RAW"

    if [ -n "$peers" ]; then
        if [ "$peers" = / ]; then pinc= plib=; else pinc="-I$peers/usr/include" plib="-L$peers/usr/lib/${pre%-}"; fi
        $cc $FLAGS $pinc -o "$d/libev" "$SRC/libev.c" $plib -lev -lm 2>"$d/libev.log" || note "$label: libev failed (see $d/libev.log)"
        $cc $FLAGS $pinc -DWITH_SIGNAL -o "$d/libev-sig" "$SRC/libev.c" $plib -lev -lm 2>>"$d/libev.log" ||
            note "$label: libev-sig failed"
        # libevent_core.a warns about getaddrinfo in static binaries: harmless here
        $cc $FLAGS $pinc -o "$d/libevent" "$SRC/libevent.c" $plib -levent_core 2>"$d/libevent.log" ||
            note "$label: libevent failed (see $d/libevent.log)"
        $cc $FLAGS $pinc -DWITH_SIGNAL -o "$d/libevent-sig" "$SRC/libevent.c" $plib -levent_core 2>>"$d/libevent.log" ||
            note "$label: libevent-sig failed"
    fi
    for p in floor floor-sig floor-aio microloop microloop-sig microloop-sig-epoll microloop-aio libev libev-sig libevent libevent-sig; do
        [ -f "$d/$p" ] && echo "$label $p $(sizes "$pre" "$d/$p")" >>"$RAW"
    done
}

if [ -n "$CROSS_COMPILE" ]; then host_cxx=${CROSS_COMPILE}g++; else host_cxx=${CXX:-g++}; fi
host_label=$($host_cxx -dumpmachine 2>/dev/null)
[ -n "$host_label" ] || host_label=host
host_peers=
if [ -z "$CROSS_COMPILE" ]; then
    if printf 'int main(void){return 0;}\n' | ${CC:-cc} -static -x c -o "$OUT/footprint/probe" - -lev -levent_core 2>/dev/null; then
        host_peers=/
    else
        note "$host_label: static libev/libevent_core not found (libev-dev, libevent-dev): peers skipped"
    fi
fi
build_target "$host_label" "$CROSS_COMPILE" "$host_peers"

if [ -n "$ARMHF" ] && [ "$ARMHF" != "$CROSS_COMPILE" ]; then
    if command -v "${ARMHF}g++" >/dev/null 2>&1; then
        armhf_peers=$(armhf_peer_root) || armhf_peers=
        [ -n "$armhf_peers" ] || note "armhf: static libev/libevent for armhf unavailable (install libev-dev:armhf" \
            "libevent-dev:armhf after dpkg --add-architecture armhf, or allow FETCH_PEERS=1): peers skipped"
        build_target "$(${ARMHF}g++ -dumpmachine)" "$ARMHF" "$armhf_peers"
    else
        note "${ARMHF}g++ not installed: armhf skipped"
    fi
fi

# ---- the table ---------------------------------------------------------------------
awk '
function row(t, p, base, what,   over) {
    if (!((t, p) in text)) return
    over = ((t, base) in text) ? sprintf("%+.1f KiB", (text[t, p] - text[t, base]) / 1024) : "-"
    printf "%-22s %-38s %8d %6d %6d  %s\n", t, what " (" p ")", text[t, p], data[t, p], bss[t, p], over
}
$2 == "sizeof_loop" { loopsize[$1] = $3; next }
{ text[$1, $2] = $3; data[$1, $2] = $4; bss[$1, $2] = $5; if (!($1 in seen)) { seen[$1] = 1; order[n++] = $1 } }
END {
    print "Footprint: static, -Os, gc-sections, stripped (text/data/bss in bytes; over floor = text - floor text)"
    printf "%-22s %-38s %8s %6s %6s  %s\n", "target", "program", "text", "data", "bss", "over floor"
    for (i = 0; i < n; i++) {
        t = order[i]
        row(t, "floor", "floor", "hand-written select")
        row(t, "microloop", "floor", "fd+timer")
        row(t, "libev", "floor", "fd+timer")
        row(t, "libevent", "floor", "fd+timer")
        row(t, "floor-sig", "floor-sig", "hand-written select")
        row(t, "microloop-sig", "floor-sig", "fd+timer+signal")
        row(t, "microloop-sig-epoll", "floor-sig", "fd+timer+signal, epoll backend")
        row(t, "libev-sig", "floor-sig", "fd+timer+signal")
        row(t, "libevent-sig", "floor-sig", "fd+timer+signal")
        row(t, "floor-aio", "floor-aio", "hand-written +AIO")
        row(t, "microloop-aio", "floor-aio", "+AIO+continuations")
    }
    for (i = 0; i < n; i++)
        if (order[i] in loopsize) printf "sizeof(microloop::loop<>) on %s: %d bytes\n", order[i], loopsize[order[i]]
}' "$RAW"
echo "raw: $RAW"

# The guard: armhf fd+timer+signal at most FOOTPRINT_MAX_KIB over the floor.
if [ -n "$ARMHF" ] && command -v "${ARMHF}g++" >/dev/null 2>&1; then
    awk -v max="${FOOTPRINT_MAX_KIB:-8}" '
    $1 ~ /^arm.*gnueabihf$/ && $2 == "floor-sig" { f = $3 }
    $1 ~ /^arm.*gnueabihf$/ && $2 == "microloop-sig" { m = $3 }
    END {
        if (f == "" || m == "" || f == "-" || m == "-") { print "footprint: FAIL: armhf fd+timer+signal not measured" > "/dev/stderr"; exit 1 }
        over = (m - f) / 1024
        if (over > max) { printf "footprint: FAIL: armhf fd+timer+signal %.1f KiB over the floor (limit %d KiB)\n", over, max > "/dev/stderr"; exit 1 }
        printf "footprint: armhf fd+timer+signal %.1f KiB over the floor (limit %d KiB): ok\n", over, max
    }' "$RAW" || exit 1
fi
