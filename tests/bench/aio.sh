#!/bin/sh
# tests/bench/aio.sh - `make bench-aio`: 4 KiB reads at random offsets of a
# cached 64 MiB file, Q in flight, through microloop's aio<64> (thread engine,
# the default, and the POSIX AIO engine) and libuv's uv_fs_read (its pool of
# 4 threads), in the same run (tests/bench/aio.cpp), with a blocking pread()
# loop as the floor (Q = 1: what a program that may block gets). Each engine
# twice: as it is (cached reads served in the loop's thread, RWF_NOWAIT) and
# built with -DMICROLOOP_AIO_NOWAIT=0 (-handoff: every read to a thread, as
# an uncached read goes).
#
#   1. throughput   ops/s at Q = 1, 16, 64 on one fd; microloop also with the
#                   reads spread over 4 fds of the file
#   2. latency      one read at a time: p50 / p99 (ns)
#
# Environment: CXX, RUNNER, BUILD / BENCH_OUT, BENCH_REPS (interleaved
# repetitions, default 3; medians), BENCH_OPS (reads per run, default
# 200000), BENCH_QUICK=1. The file is made in $OUT and read once to cache it.
# Raw numbers: $OUT/aio.txt.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-build}
OUT=${BENCH_OUT:-$BUILD/bench}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
RAW=$OUT/aio.txt
CROSS_COMPILE=${CROSS_COMPILE:-}
CXX=${CXX:-${CROSS_COMPILE}g++}
RUNNER=${RUNNER:-}
REPS=${BENCH_REPS:-3}
OPS=${BENCH_OPS:-200000}
if [ "${BENCH_QUICK:-0}" = 1 ]; then REPS=1 OPS=20000; fi
LATOPS=$((OPS / 10))

note() { echo "bench: $*" >&2; }
STATS_AWK=$(cat "$ROOT/tests/bench/stats.awk") # kv, add, med, ratio for the tables

LIBS=
for l in microloop:1:-lrt microloop-handoff:1:-lrt:-DMICROLOOP_AIO_NOWAIT=0 libuv:4:-luv; do
    name=${l%%:*} rest=${l#*:}
    num=${rest%%:*} libs=${rest#*:}
    flags=
    case $libs in *:*) flags=${libs#*:} libs=${libs%%:*} ;; esac
    # shellcheck disable=SC2086 # libs and flags are lists of words
    if $CXX -std=c++11 -O2 -DNDEBUG -Wall -Wextra -I"$ROOT/include" -DBENCH_LIB="$num" $flags -o "$OUT/aio-$name" \
        "$ROOT/tests/bench/aio.cpp" -pthread $libs 2>"$OUT/build-aio-$name.log"; then
        LIBS="$LIBS $name"
    elif [ "$name" != libuv ]; then
        note "building microloop failed:"; cat "$OUT/build-aio-$name.log" >&2; exit 1
    else
        note "libuv missing (install libuv1-dev): skipped"
    fi
done

DATA=$OUT/aio-data
if [ ! -f "$DATA" ] || [ "$(wc -c <"$DATA")" -ne 67108864 ]; then
    head -c 67108864 /dev/urandom >"$DATA" || exit 1
fi
cat "$DATA" >/dev/null # into the page cache

IMPLS="microloop:pread microloop:thread microloop-handoff:thread microloop:posix microloop-handoff:posix"
case " $LIBS " in *" libuv "*) IMPLS="$IMPLS libuv:uv" ;; esac

{
    echo "# microloop aio bench $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "# nproc=$(nproc 2>/dev/null) cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ *//')"
    echo "# CXX=$($CXX --version 2>/dev/null | head -n 1) RUNNER=$RUNNER reps=$REPS ops=$OPS"
} >"$RAW"

rep=0
while [ "$rep" -lt "$REPS" ]; do
    order=$IMPLS
    [ $((rep % 2)) = 1 ] && order=$(echo "$IMPLS" | awk '{ for (i = NF; i > 0; i--) printf "%s ", $i }')
    for impl in $order; do
        bin=${impl%:*} engine=${impl#*:}
        for q in 1 16 64; do
            [ "$engine" = pread ] && [ "$q" != 1 ] && continue # the floor reads one at a time
            env $RUNNER "$OUT/aio-$bin" tput "$engine" "$DATA" $q 1 "$OPS" >>"$RAW" || note "$impl tput $q failed"
            if [ "$bin" != libuv ] && [ "$engine" != pread ]; then
                env $RUNNER "$OUT/aio-$bin" tput "$engine" "$DATA" $q 4 "$OPS" >>"$RAW" || note "$impl tput $q x4 failed"
            fi
        done
        env $RUNNER "$OUT/aio-$bin" lat "$engine" "$DATA" "$LATOPS" >>"$RAW" || note "$impl lat failed"
    done
    rep=$((rep + 1))
done

awk "$STATS_AWK"'
function seen(l) { if (!(l in known)) { known[l] = 1; libs[++nl] = l } }
/^#/ { print; next }
$1 == "tput" { kv(); seen(f["lib"]); add("t" SUBSEP f["lib"] SUBSEP f["q"] SUBSEP f["fds"], f["ops_per_s"]); next }
$1 == "lat" { kv(); seen(f["lib"]); add("p50" SUBSEP f["lib"], f["p50_ns"]); add("p99" SUBSEP f["lib"], f["p99_ns"]); next }
END {
    print ""
    print "1. 4 KiB random reads of a cached 64 MiB file, Q in flight: ops/s (medians of runs)"
    printf "%-24s %4s %4s %10s %9s\n", "impl", "Q", "fds", "ops/s", "vs libuv"
    for (q = 1; q <= 64; q = (q == 1 ? 16 : q * 4))
        for (i = 1; i <= nl; i++)
            for (d = 1; d <= 4; d += 3) {
                k = "t" SUBSEP libs[i] SUBSEP q SUBSEP d
                if (!cnt[k]) continue
                printf "%-24s %4d %4d %10.0f %9s\n", libs[i], q, d, med(k), ratio(med(k), med("t" SUBSEP "libuv" SUBSEP q SUBSEP 1))
            }
    print ""
    print "2. One read at a time (Q = 1): latency, submit to callback (medians of runs; ns)"
    printf "%-24s %10s %10s %9s %9s\n", "impl", "p50", "p99", "p50/libuv", "p99/libuv"
    for (i = 1; i <= nl; i++)
        printf "%-24s %10d %10d %9s %9s\n", libs[i], med("p50" SUBSEP libs[i]), med("p99" SUBSEP libs[i]),
            ratio(med("p50" SUBSEP libs[i]), med("p50" SUBSEP "libuv")), ratio(med("p99" SUBSEP libs[i]), med("p99" SUBSEP "libuv"))
}' "$RAW" | tee "$OUT/aio-tables.txt"
echo "raw: $RAW  tables: $OUT/aio-tables.txt"
