#!/bin/sh
# tests/bench/threads.sh - `make bench-threads`: the worker pool and the mailbox
# against libuv's uv_queue_work and uv_async_send (+ a locked queue), in the
# same run (tests/bench/threads.cpp).
#
#   1. submit     round trip of an empty job, one at a time: p50 / p99 (ns)
#   2. mailbox    items per second from 1 and from 4 posting threads
#
# Environment: CXX, CROSS_COMPILE, RUNNER, BUILD / BENCH_OUT, BENCH_REPS
# (interleaved repetitions, default 5), BENCH_QUICK=1. libuv is built if
# installed (apt-get install libuv1-dev); its thread pool has 4 threads, and
# so has microloop's here. Raw numbers: $OUT/threads.txt.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-build}
OUT=${BENCH_OUT:-$BUILD/bench}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
RAW=$OUT/threads.txt
CROSS_COMPILE=${CROSS_COMPILE:-}
CXX=${CXX:-${CROSS_COMPILE}g++}
RUNNER=${RUNNER:-}
REPS=${BENCH_REPS:-5}
SUBMITS=20000
ITEMS=2000000
if [ "${BENCH_QUICK:-0}" = 1 ]; then REPS=2 SUBMITS=2000 ITEMS=200000; fi

note() { echo "bench: $*" >&2; }
STATS_AWK=$(cat "$ROOT/tests/bench/stats.awk") # kv, add, med, ratio for the tables

LIBS=
for l in microloop:1: libuv:4:-luv; do
    name=${l%%:*} rest=${l#*:}
    num=${rest%%:*} libs=${rest#*:}
    # shellcheck disable=SC2086 # libs is a list of words
    if $CXX -std=c++11 -O2 -DNDEBUG -Wall -Wextra -I"$ROOT/include" -DBENCH_LIB="$num" -o "$OUT/threads-$name" \
        "$ROOT/tests/bench/threads.cpp" -pthread $libs 2>"$OUT/build-threads-$name.log"; then
        LIBS="$LIBS $name"
    elif [ "$name" = microloop ]; then
        note "building microloop failed:"; cat "$OUT/build-threads-$name.log" >&2; exit 1
    else
        note "libuv missing (install libuv1-dev): skipped"
    fi
done

{
    echo "# microloop threads bench $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "# nproc=$(nproc 2>/dev/null) cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ *//')"
    echo "# CXX=$($CXX --version 2>/dev/null | head -n 1) RUNNER=$RUNNER reps=$REPS"
} >"$RAW"

rep=0
while [ "$rep" -lt "$REPS" ]; do
    # Alternate which library goes first.
    order=$LIBS
    [ $((rep % 2)) = 1 ] && order=$(echo "$LIBS" | awk '{ for (i = NF; i > 0; i--) printf "%s ", $i }')
    for lib in $order; do
        env $RUNNER "$OUT/threads-$lib" submit $SUBMITS >>"$RAW" || note "$lib submit failed"
        env $RUNNER "$OUT/threads-$lib" mailbox 1 "$ITEMS" >>"$RAW" || note "$lib mailbox 1 failed"
        env $RUNNER "$OUT/threads-$lib" mailbox 4 $((ITEMS / 4)) >>"$RAW" || note "$lib mailbox 4 failed"
    done
    rep=$((rep + 1))
done

awk "$STATS_AWK"'
function seen(l) { if (!(l in known)) { known[l] = 1; libs[++nl] = l } }
/^#/ { print; next }
$1 == "submit" { kv(); seen(f["lib"]); add("p50" SUBSEP f["lib"], f["p50_ns"]); add("p99" SUBSEP f["lib"], f["p99_ns"]); next }
$1 == "mailbox" { kv(); seen(f["lib"]); k = f["lib"] SUBSEP f["posters"]; add("mps" SUBSEP k, f["mitems_per_s"]); add("ns" SUBSEP k, f["ns_per_item"]); next }
END {
    print ""
    print "1. Empty job round trip, loop -> worker -> loop, one at a time (medians of runs; ns)"
    printf "%-12s %10s %10s\n", "impl", "p50", "p99"
    for (i = 1; i <= nl; i++) printf "%-12s %10d %10d\n", libs[i], med("p50" SUBSEP libs[i]), med("p99" SUBSEP libs[i])
    print ""
    print "2. Mailbox throughput, items handed to the loop thread (medians of runs)"
    printf "%-12s %8s %12s %10s\n", "impl", "posters", "Mitems/s", "ns/item"
    for (p = 1; p <= 4; p += 3)
        for (i = 1; i <= nl; i++) printf "%-12s %8d %12.2f %10.1f\n", libs[i], p, med("mps" SUBSEP libs[i] SUBSEP p), med("ns" SUBSEP libs[i] SUBSEP p)
    print "(libuv: a mutex-protected ring of the same 1024 items + uv_async_send, the usual libuv pattern)"
}' "$RAW" | tee "$OUT/threads-tables.txt"
echo "raw: $RAW  tables: $OUT/threads-tables.txt"
