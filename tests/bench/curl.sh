#!/bin/sh
# tests/bench/curl.sh - `make bench-curl`: 200 downloads of a 64 KiB file from
# examples/http_file_server on loopback, with microloop's curl adapter and with
# curl's own curl_multi_poll() loop, interleaved in one run (curl_bench.cpp):
# medians and the ratio (target <= 1.0x).
#
# Environment: BUILD (default build; the server is $BUILD/examples/http_file_server,
# the program $BUILD/bench/curl_bench), BENCH_REPS (default 5),
# BENCH_CURL_N (downloads, default 200), BENCH_CURL_CONNS (parallel connections, default 32).
set -eu
BUILD=${BUILD:-build}
REPS=${BENCH_REPS:-5}
N=${BENCH_CURL_N:-200}
CONNS=${BENCH_CURL_CONNS:-32}
work=$(mktemp -d "${TMPDIR:-/tmp}/microloop-bench-curl.XXXXXX")
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT INT TERM
head -c 65536 /dev/urandom >"$work/64k.bin"
"$BUILD/examples/http_file_server" --root "$work" --port 0 >"$work/server.out" &
pid=$!
i=0
while [ ! -s "$work/server.out" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
port=$(sed -n '1s/.*://p' "$work/server.out")
[ -n "$port" ] || { echo "bench-curl: the server did not start" >&2; exit 1; }
"$BUILD/bench/curl_bench" "http://127.0.0.1:$port/64k.bin" "$N" "$REPS" "$CONNS"
