#!/bin/sh
# tests/bench/http.sh - `make bench-http` (and part of `make bench`):
# wrk against examples/http_file_server and lighttpd (server.event-handler =
# "select", one process) serving the same directory on loopback.
# Requests/s and p99 latency for a 4 KiB file (keep-alive, 16 and 100
# connections) and a 1 MiB file (16 connections), and each server's peak RSS.
#
# Environment: BUILD (where the examples are built), BENCH_SECONDS (per run,
# default 5). Needs wrk and lighttpd (apt-get install wrk lighttpd).
set -eu
BUILD=${BUILD:-build}
SECS=${BENCH_SECONDS:-5}
for c in wrk lighttpd; do command -v $c >/dev/null || { echo "bench-http: $c missing: skipped" >&2; exit 0; }; done
work=$(mktemp -d "${TMPDIR:-/tmp}/microloop-bench-http.XXXXXX")
pids=
trap 'for p in $pids; do kill $p 2>/dev/null || true; done; rm -rf "$work"' EXIT INT TERM
mkdir "$work/www"
head -c 4096 /dev/urandom >"$work/www/4k.bin"
head -c 1048576 /dev/urandom >"$work/www/1m.bin"

"$BUILD/examples/http_file_server" --root "$work/www" --port 0 >"$work/ml.out" &
ml=$!
pids="$ml"
sleep 0.3
ml_port=$(sed -n '1s/.*://p' "$work/ml.out")

lt_port=$((20000 + $$ % 20000))
cat >"$work/lighttpd.conf" <<CONF
server.document-root = "$work/www"
server.bind = "127.0.0.1"
server.port = $lt_port
server.event-handler = "select"
server.max-connections = 1024
server.max-keep-alive-requests = 100000
server.errorlog = "$work/lighttpd.err"
CONF
lighttpd -D -f "$work/lighttpd.conf" &
lt=$!
pids="$pids $lt"
sleep 0.5

run() { # $1 port, $2 connections, $3 file -> "req/s p99"
    wrk -t2 -c"$2" -d"${SECS}s" --latency "http://127.0.0.1:$1/$3" >"$work/wrk.out" 2>&1
    rps=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.out")
    p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.out")
    bad=$(grep -E 'Non-2xx|Socket errors' "$work/wrk.out" | tr -s ' ' | tr '\n' ' ')
    echo "$rps $p99 $bad"
}
rss() { awk '/^VmHWM/ {print $2 " kB"}' "/proc/$1/status"; }

printf '| test | http_file_server req/s | p99 | lighttpd (select) req/s | p99 |\n|---|---|---|---|---|\n'
for t in "16 4k.bin" "100 4k.bin" "16 1m.bin"; do
    set -- $t
    a=$(run "$ml_port" "$1" "$2")
    b=$(run "$lt_port" "$1" "$2")
    set -- "$1" "$2" $a $b
    printf '| %s, %s connections | %s | %s | %s | %s |\n' "$2" "$1" "$3" "$4" "$5" "$6"
done
printf '\npeak RSS: http_file_server %s, lighttpd %s\n' "$(rss $ml)" "$(rss $lt)"
