#!/bin/sh
# tests/bench/run.sh - `make bench`: microloop against a hand-written select() loop
# (the floor), libev, libevent and libuv, measured in the same run.
#
#   1. pipe ring      wall time per loop iteration and per event (interleaved
#                     repetitions, medians); microloop also with on_stall(10 ms)
#                     on ("microloop-stall")
#   2. instructions   user-space instructions per event under callgrind
#                     (deterministic): delta Ir / delta events between two W
#   3. timer churn    ns per op, 10,000 armed timers, two forms: re-arm of an
#                     armed timer, and cancel + a new timer (stop, then start)
#   4. heap           allocation calls and bytes per phase (LD_PRELOAD counter);
#                     the bench fails if microloop allocates anything
#   6. footprint      tests/bench/footprint.sh (`make size`); the bench fails
#                     if microloop's fd+timer+signal program grows beyond 8 KiB
#                     over the floor on armhf (skipped with BENCH_SIZE=0)
#   5. timer lateness a 1 ms periodic timer: fire time - ideal deadline, p50/p99/
#                     max and drift, against a timerfd (the floor); microloop
#                     with the thread's default timer slack and with
#                     set_timer_slack(1 ns); libev's select backend
#   7. disk, threads  aio.sh (`make bench-aio`; skipped with BENCH_AIO=0) and
#                     threads.sh (`make bench-threads`; BENCH_THREADS=0)
#
# Environment: CXX, CC, CROSS_COMPILE, RUNNER (e.g. qemu for a cross build),
# BUILD / BENCH_OUT (output directory), BENCH_REPS (interleaved repetitions,
# default 5), BENCH_RUNS (timed runs per process, default 10), BENCH_TICKS
# (timer ticks per lateness run, default 3000; 3 runs each), BENCH_QUICK=1
# (fewer of all three), BENCH_SIZE=0 (no footprint check). Raw numbers:
# $OUT/results.txt. Exit status 1 if a guarded number regressed.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-build}
OUT=${BENCH_OUT:-$BUILD/bench}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
RAW=$OUT/results.txt
CROSS_COMPILE=${CROSS_COMPILE:-}
CXX=${CXX:-${CROSS_COMPILE}g++}
CC=${CC:-${CROSS_COMPILE}gcc}
RUNNER=${RUNNER:-}
REPS=${BENCH_REPS:-5}
RUNS=${BENCH_RUNS:-10}
TICKS=${BENCH_TICKS:-3000}
if [ "${BENCH_QUICK:-0}" = 1 ]; then REPS=3 RUNS=5 TICKS=500; fi
CXXFLAGS_BENCH="-std=c++11 -O2 -DNDEBUG -Wall -Wextra"

note() { echo "bench: $*" >&2; }
STATS_AWK=$(cat "$ROOT/tests/bench/stats.awk") # kv, add, med, ratio for the tables

# ---- build: one binary per library ------------------------------------------------
# name:BENCH_LIB:libs
built=
build() {
    name=$1 lib=$2 libs=$3
    if $CXX $CXXFLAGS_BENCH -I"$ROOT/include" -DBENCH_LIB="$lib" -o "$OUT/bench-$name" "$ROOT/tests/bench/bench.cpp" \
        $libs -ldl 2>"$OUT/build-$name.log"; then
        built="$built $name"
    else
        case $name in
        floor | microloop) note "building $name failed:"; cat "$OUT/build-$name.log" >&2; exit 1 ;;
        libev) note "libev missing (install libev-dev): skipped" ;;
        libevent) note "libevent missing (install libevent-dev): skipped" ;;
        libuv) note "libuv missing (install libuv1-dev): skipped" ;;
        esac
    fi
}
build floor 0 ""
build microloop 1 ""
build libev 2 "-lev"
build libevent 3 "-levent_core"
build libuv 4 "-luv"
has() { case " $built " in *" $1 "*) return 0 ;; esac; return 1; }
failed=0
# The name an implementation goes by in the tables.
impl_name() {
    case $1 in
    floor:*) echo floor ;;
    microloop:select) echo microloop ;;
    microloop:stall) echo microloop-stall ;;
    *) echo "${1%:*}-${1#*:}" ;;
    esac
}

# The implementations: binary and backend variant.
IMPLS="floor:select microloop:select microloop:stall microloop:epoll"
has libev && IMPLS="$IMPLS libev:select libev:epoll"
has libevent && IMPLS="$IMPLS libevent:select libevent:epoll"
has libuv && IMPLS="$IMPLS libuv:epoll"

# Interleave: every repetition runs every implementation once, starting at a
# different one each time, so drift on a noisy machine hits all alike.
rotate() { # rotate N word...
    k=$1
    shift
    n=$#
    i=0
    out=
    for w in "$@"; do
        pos=$(((i - k % n + n) % n))
        eval "slot_$pos=\$w"
        i=$((i + 1))
    done
    i=0
    while [ $i -lt $n ]; do
        eval "out=\"\$out \$slot_$i\""
        i=$((i + 1))
    done
    echo $out
}

: >"$RAW"
{
    echo "# microloop bench $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "# nproc=$(nproc 2>/dev/null) cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ *//')"
    echo "# CXX=$($CXX --version 2>/dev/null | head -n 1) RUNNER=$RUNNER reps=$REPS runs=$RUNS"
} >>"$RAW"
start=$(date +%s)

# ---- 1. pipe ring -----------------------------------------------------------------------
CONFIGS="100:1 100:100 500:1 500:100"
W=1000
rep=0
echo "pipe ring: $REPS interleaved repetitions x $RUNS runs ..." >&2
while [ $rep -lt "$REPS" ]; do
    for cfg in $CONFIGS; do
        n=${cfg%:*} a=${cfg#*:}
        for impl in $(rotate $rep $IMPLS); do
            bin=${impl%:*} var=${impl#*:}
            line=$(env $RUNNER "$OUT/bench-$bin" ring "$var" "$n" "$a" "$W" "$RUNS") || note "ring $impl $n $a failed"
            [ -n "$line" ] && echo "ring rep=$rep $line" >>"$RAW"
        done
    done
    rep=$((rep + 1))
done

# ---- 2. instructions per event (callgrind) ----------------------------------------------
if [ -n "$RUNNER" ]; then
    note "cross build: callgrind skipped"
elif ! command -v valgrind >/dev/null 2>&1; then
    note "valgrind missing (apt-get install valgrind): instruction counts skipped"
else
    echo "callgrind ..." >&2
    W1=1000 W2=4000
    for cfg in 100:1 500:1 100:100 500:100; do
        n=${cfg%:*} a=${cfg#*:}
        for impl in $IMPLS; do
            bin=${impl%:*} var=${impl#*:}
            ir1=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$OUT/bench-$bin" ring "$var" "$n" "$a" $W1 1 2>&1 |
                sed -n 's/.*Collected : //p')
            ir2=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$OUT/bench-$bin" ring "$var" "$n" "$a" $W2 1 2>&1 |
                sed -n 's/.*Collected : //p')
            # each process does 2 warm-up runs + 1 timed run of W writes each
            name=$(impl_name "$impl")
            [ -n "$ir1" ] && [ -n "$ir2" ] &&
                echo "ir lib=$name pairs=$n active=$a ir1=$ir1 ir2=$ir2 devents=$((3 * (W2 - W1)))" >>"$RAW"
        done
    done
fi

# ---- 3. timer churn -----------------------------------------------------------------------
TIMPLS="microloop:select"
has libev && TIMPLS="$TIMPLS libev:epoll"
has libevent && TIMPLS="$TIMPLS libevent:epoll"
has libuv && TIMPLS="$TIMPLS libuv:epoll"
echo "timer churn ..." >&2
rep=0
while [ $rep -lt "$REPS" ]; do
    for form in rearm restart; do
        for impl in $(rotate $rep $TIMPLS); do
            bin=${impl%:*} var=${impl#*:}
            line=$(env $RUNNER "$OUT/bench-$bin" timers "$var" 10000 100000 5 $form) || note "timers $impl $form failed"
            [ -n "$line" ] && echo "timers rep=$rep $line" >>"$RAW"
        done
    done
    rep=$((rep + 1))
done
sed -i 's/^\(timers rep=[0-9]*\) lib=libev-epoll /\1 lib=libev /; s/^\(timers rep=[0-9]*\) lib=libevent-epoll /\1 lib=libevent /; s/^\(timers rep=[0-9]*\) lib=libuv-epoll /\1 lib=libuv /' "$RAW"

# ---- 4. heap ------------------------------------------------------------------------------------
if [ -n "$RUNNER" ]; then
    note "cross build: heap counts skipped"
elif ${CC} -O2 -shared -fPIC -o "$OUT/heapcount.so" "$ROOT/tests/bench/heapcount.c" 2>"$OUT/build-heapcount.log"; then
    for impl in $TIMPLS; do
        bin=${impl%:*} var=${impl#*:}
        LD_PRELOAD=$OUT/heapcount.so "$OUT/bench-$bin" heap "$var" | awk -v lib="$bin" '/^phase=/ { print "heap lib=" lib " " $0 }' >>"$RAW"
    done
    # The zero-heap promise, guarded: any allocation by microloop fails the bench.
    if ! grep -q '^heap lib=microloop ' "$RAW"; then
        note "FAIL: no heap counts for microloop"
        failed=1
    elif grep '^heap lib=microloop ' "$RAW" | grep -qv ' calls=0 '; then
        note "FAIL: microloop allocated after construction:"
        grep '^heap lib=microloop ' "$RAW" | grep -v ' calls=0 ' >&2
        failed=1
    fi
else
    note "heapcount.so failed to build: heap counts skipped"
fi

# ---- 5. timer lateness ---------------------------------------------------------------------------
# Three interleaved runs of each, medians. Each run is one process, so the
# slack one run sets cannot leak into the next.
JIMPLS="floor:timerfd microloop:default microloop:slack"
has libev && JIMPLS="$JIMPLS libev:select"
echo "timer lateness: 3 x $TICKS ticks of 1 ms ..." >&2
rep=0
while [ $rep -lt 3 ]; do
    for impl in $(rotate $rep $JIMPLS); do
        bin=${impl%:*} var=${impl#*:}
        line=$(env $RUNNER "$OUT/bench-$bin" jitter "$var" "$TICKS" 1000) || note "jitter $impl failed"
        [ -n "$line" ] && echo "jitter rep=$rep $line" >>"$RAW"
    done
    rep=$((rep + 1))
done

# ---- tables ------------------------------------------------------------------------------------
awk -v elapsed=$(($(date +%s) - start)) "$STATS_AWK"'
function seen_lib(part, lib) { if (!((part, lib) in known)) { known[part, lib] = 1; libs[part, ++nlibs[part]] = lib } }
/^#/ { print; next }
$1 == "ring" { kv(); k = f["lib"] SUBSEP f["pairs"] SUBSEP f["active"]; add("us" SUBSEP k, f["us_per_iter"]); add("ns" SUBSEP k, f["ns_per_event"]); seen_lib("ring", f["lib"]); next }
$1 == "ir" { kv(); k = f["lib"] SUBSEP f["pairs"] SUBSEP f["active"]; ir[k] = (f["ir2"] - f["ir1"]) / f["devents"]; seen_lib("ir", f["lib"]); next }
$1 == "timers" { kv(); fm = ("form" in f) ? f["form"] : "rearm"; add("t" SUBSEP f["lib"] SUBSEP fm, f["ns_per_op"]); seen_lib("timers", f["lib"]); next }
$1 == "heap" { kv(); hc[f["lib"], f["phase"]] = f["calls"]; hb[f["lib"], f["phase"]] = f["bytes"]; seen_lib("heap", f["lib"]); next }
$1 == "jitter" { kv(); l = f["lib"]; add("j50" SUBSEP l, f["p50_us"]); add("j99" SUBSEP l, f["p99_us"]); add("jmax" SUBSEP l, f["max_us"])
    add("jdrift" SUBSEP l, f["drift_us"]); add("jslack" SUBSEP l, f["slack_ns"]); early[l] += f["early"]; jticks = f["ticks"]; seen_lib("jitter", l); next }
END {
    ncfg = split("100:1 100:100 500:1 500:100", cfgs, " ")
    if (nlibs["ring"]) {
        print ""
        print "1. Pipe ring (W=1000 writes; medians of interleaved repetitions; wall time)"
        printf "%-16s %5s %4s %10s %10s %9s %15s\n", "impl", "N", "A", "us/iter", "ns/event", "vs floor", "vs libev-select"
        for (c = 1; c <= ncfg; c++) {
            split(cfgs[c], na, ":")
            fl = med("ns" SUBSEP "floor" SUBSEP na[1] SUBSEP na[2]); ev = med("ns" SUBSEP "libev-select" SUBSEP na[1] SUBSEP na[2])
            for (i = 1; i <= nlibs["ring"]; i++) {
                l = libs["ring", i]; k = l SUBSEP na[1] SUBSEP na[2]
                if (!cnt["ns" SUBSEP k]) continue
                x = med("ns" SUBSEP k)
                printf "%-16s %5d %4d %10.2f %10.0f %9s %15s\n", l, na[1], na[2], med("us" SUBSEP k), x, ratio(x, fl), ratio(x, ev)
            }
        }
    }
    if (nlibs["ir"]) {
        print ""
        print "2. User-space instructions per event (callgrind, delta Ir / delta events, W=1000 vs 4000)"
        printf "%-16s %5s %4s %10s %9s %15s\n", "impl", "N", "A", "Ir/event", "vs floor", "vs libev-select"
        for (c = 1; c <= ncfg; c++) {
            split(cfgs[c], na, ":")
            fl = ir["floor", na[1], na[2]]; ev = ir["libev-select", na[1], na[2]]
            for (i = 1; i <= nlibs["ir"]; i++) {
                l = libs["ir", i]
                if (!((l, na[1], na[2]) in ir)) continue
                x = ir[l, na[1], na[2]]
                printf "%-16s %5d %4d %10.0f %9s %15s\n", l, na[1], na[2], x, ratio(x, fl), ratio(x, ev)
            }
        }
        # The targets: microloop at most 1.25x the floor everywhere; on_stall
        # adds at most 30 instructions per event.
        tl = ""; ts = ""; ok = 1; okst = 1
        for (c = 1; c <= ncfg; c++) {
            split(cfgs[c], na, ":")
            fl = ir["floor", na[1], na[2]]; x = ir["microloop", na[1], na[2]]
            if (fl > 0 && x > 0) { tl = tl sprintf(" %s:%.2fx", cfgs[c], x / fl); if (x > 1.25 * fl) ok = 0 }
            if (("microloop-stall", na[1], na[2]) in ir && x > 0) {
                d = ir["microloop-stall", na[1], na[2]] - x; ts = ts sprintf(" %s:%+.0f", cfgs[c], d); if (d > 30) okst = 0
            }
        }
        if (tl != "") printf "targets: microloop <= 1.25x floor (N:A ratio):%s: %s\n", tl, ok ? "met" : "missed"
        if (ts != "") printf "on_stall(10 ms) cost, Ir/event over microloop (N:A):%s; <= +30: %s\n", ts, okst ? "met" : "missed"
    }
    if (nlibs["timers"]) {
        print ""
        print "3. Timer churn (10,000 armed timers, 100,000 ops in a callback; median ns/op)"
        print "   rearm: re-arm an armed timer; restart: cancel it and start a new one (stop-then-start)"
        printf "%-16s %12s %9s %14s %9s\n", "impl", "rearm ns/op", "vs libev", "restart ns/op", "vs libev"
        evr = med("t" SUBSEP "libev" SUBSEP "rearm"); evs = med("t" SUBSEP "libev" SUBSEP "restart")
        for (i = 1; i <= nlibs["timers"]; i++) {
            l = libs["timers", i]; x = med("t" SUBSEP l SUBSEP "rearm"); y = med("t" SUBSEP l SUBSEP "restart")
            printf "%-16s %12.1f %9s %14.1f %9s\n", l, x, ratio(x, evr), y, ratio(y, evs)
        }
        x = med("t" SUBSEP "microloop" SUBSEP "rearm"); y = med("t" SUBSEP "microloop" SUBSEP "restart")
        if (x > 0 && y > 0)
            printf "targets: <= 20 ns/op and <= 0.75x libev: rearm %s, restart %s\n",
                (x <= 20 && (evr <= 0 || x <= 0.75 * evr)) ? "met" : "missed", (y <= 20 && (evs <= 0 || y <= 0.75 * evs)) ? "met" : "missed"
    }
    if (nlibs["heap"]) {
        print ""
        print "4. Heap: allocation calls / bytes per phase (loop, 100 fd watchers, 100 timers, first iteration)"
        printf "%-12s %14s %14s %14s %14s %12s %9s\n", "impl", "create", "100 fds", "100 timers", "iterate", "total calls", "vs libev"
        np = split("create fds timers iterate", ph, " ")
        for (i = 1; i <= nlibs["heap"]; i++) {
            l = libs["heap", i]; tot[l] = 0
            for (p = 1; p <= np; p++) tot[l] += hc[l, ph[p]]
        }
        for (i = 1; i <= nlibs["heap"]; i++) {
            l = libs["heap", i]
            printf "%-12s", l
            for (p = 1; p <= np; p++) printf " %14s", hc[l, ph[p]] "/" hb[l, ph[p]] "B"
            printf " %12d %9s\n", tot[l], ("libev" in tot) ? (tot["libev"] ? sprintf("%.2fx", tot[l] / tot["libev"]) : "-") : "-"
        }
        print "(the floor allocates nothing; microloop: the loop object is static storage, as intended)"
    }
    if (nlibs["jitter"]) {
        print ""
        printf "5. Timer lateness (1 ms periodic timer, %d ticks; fire time - ideal deadline, us; medians of 3 runs)\n", jticks
        printf "%-20s %8s %8s %9s %9s %10s %10s %6s\n", "impl", "p50", "p99", "max", "drift", "p50/floor", "p99/floor", "early"
        f50 = med("j50" SUBSEP "timerfd"); f99 = med("j99" SUBSEP "timerfd")
        n = split("timerfd microloop microloop-slack1ns libev-select", jl, " ")
        for (i = 1; i <= n; i++) {
            l = jl[i]
            if (!cnt["j50" SUBSEP l]) { printf "%-20s %8s %8s %9s %9s %10s %10s %6s\n", l, "n/a", "n/a", "n/a", "n/a", "-", "-", "-"; continue }
            printf "%-20s %8.1f %8.1f %9.1f %9.1f %10s %10s %6d\n", l, med("j50" SUBSEP l), med("j99" SUBSEP l), med("jmax" SUBSEP l),
                med("jdrift" SUBSEP l), ratio(med("j50" SUBSEP l), f50), ratio(med("j99" SUBSEP l), f99), early[l]
        }
        # The targets: with set_timer_slack(1 ns), p50 and p99 within 1.1x the
        # floor; without it, within the floor plus the default slack of the thread.
        if (cnt["j50" SUBSEP "microloop"] && f50 > 0) {
            sl = med("jslack" SUBSEP "microloop") / 1000
            s50 = med("j50" SUBSEP "microloop-slack1ns"); s99 = med("j99" SUBSEP "microloop-slack1ns")
            d50 = med("j50" SUBSEP "microloop"); d99 = med("j99" SUBSEP "microloop")
            printf "targets: slack 1 ns p50, p99 <= 1.1x floor: %s; default p50, p99 <= floor + %.0f us (thread slack): %s\n",
                (s50 <= 1.1 * f50 && s99 <= 1.1 * f99) ? "met" : "missed", sl,
                (d50 <= f50 + sl && d99 <= f99 + sl) ? "met" : "missed"
        }
    }
    printf "\nbench: %d s\n", elapsed
}' "$RAW" | tee "$OUT/tables.txt"
echo "raw: $RAW  tables: $OUT/tables.txt"

# ---- 6. footprint -----------------------------------------------------------------------
# footprint.sh fails if microloop's armhf fd+timer+signal program grows past
# its limit over the floor.
if [ "${BENCH_SIZE:-1}" != 0 ]; then
    echo "footprint ..." >&2
    # (not through a pipe: the script's own exit status is the guard)
    BENCH_OUT=$OUT FETCH_PEERS=${FETCH_PEERS:-0} sh "$ROOT/tests/bench/footprint.sh" >"$OUT/footprint-table.txt" || failed=1
    cat "$OUT/footprint-table.txt"
fi
# ---- 7. disk reads and threads -------------------------------------------------------
# aio<N>'s engines against libuv's uv_fs_read and a blocking pread() floor
# (aio.sh, `make bench-aio`), then the worker pool and the mailbox against
# libuv (threads.sh, `make bench-threads`); one after the other, never at once.
if [ "${BENCH_AIO:-1}" != 0 ]; then
    echo "aio ..." >&2
    BENCH_OUT=$OUT sh "$ROOT/tests/bench/aio.sh" || failed=1
fi
if [ "${BENCH_THREADS:-1}" != 0 ]; then
    echo "threads ..." >&2
    BENCH_OUT=$OUT sh "$ROOT/tests/bench/threads.sh" || failed=1
fi
if [ "$failed" != 0 ]; then
    note "FAILED: a guarded number regressed, or a part failed (see above)"
    exit 1
fi
