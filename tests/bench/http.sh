#!/bin/sh
# tests/bench/http.sh - `make bench-http` (and part of `make bench`):
# wrk against examples/http_file_server and lighttpd (server.event-handler =
# "select", one process) serving the same directory on loopback.
# Requests/s, p99 latency and the server's CPU time (user + system, all its
# threads) per request for a 4 KiB file (keep-alive, 16 and 100
# connections) and a 1 MiB file (16 connections), each server's peak RSS,
# and the targets: >= 0.7x lighttpd's requests/s on the 4 KiB file,
# >= 0.9x on the 1 MiB file, less peak RSS than lighttpd.
#
# The runs are interleaved (microloop, lighttpd, microloop, ... with the
# order swapped every repetition) and the medians reported, so that load
# from elsewhere falls on both servers alike.
#
# Environment: BUILD (where the examples are built), BENCH_SECONDS (per run,
# default 5), BENCH_REPS (repetitions, default 3), HTTP_SERVER (the binary,
# default $BUILD/examples/http_file_server), BENCH_HTTP_TESTS (default
# "16:4k.bin 100:4k.bin 16:1m.bin": connections:file). Needs wrk and lighttpd
# (apt-get install wrk lighttpd).
set -eu
BUILD=${BUILD:-build}
SECS=${BENCH_SECONDS:-5}
REPS=${BENCH_REPS:-3}
SERVER=${HTTP_SERVER:-$BUILD/examples/http_file_server}
for c in wrk lighttpd; do command -v $c >/dev/null || { echo "bench-http: $c missing: skipped" >&2; exit 0; }; done
work=$(mktemp -d "${TMPDIR:-/tmp}/microloop-bench-http.XXXXXX")
pids=
trap 'for p in $pids; do kill $p 2>/dev/null || true; done; rm -rf "$work"' EXIT INT TERM
mkdir "$work/www"
head -c 4096 /dev/urandom >"$work/www/4k.bin"
head -c 1048576 /dev/urandom >"$work/www/1m.bin"

"$SERVER" --root "$work/www" --port 0 >"$work/ml.out" &
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

hz=$(getconf CLK_TCK)
cpu() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; } # utime + stime, threads included, in ticks
run() { # $1 name, $2 port, $3 connections, $4 file, $5 pid: appends "test name req/s p99_ms cpu_us/req" to results
    c0=$(cpu "$5")
    wrk -t2 -c"$3" -d"${SECS}s" --latency "http://127.0.0.1:$2/$4" >"$work/wrk.out" 2>&1
    c1=$(cpu "$5")
    if grep -qE 'Non-2xx|Socket errors' "$work/wrk.out"; then
        echo "bench-http: $1, $4, $3 connections: $(grep -E 'Non-2xx|Socket errors' "$work/wrk.out" | tr -s ' ')" >&2
    fi
    awk -v t="$4,$3" -v n="$1" -v ticks=$((c1 - c0)) -v hz="$hz" '
        / requests in / { reqs = $1 }
        /^Requests\/sec/ { rps = $2 }
        $1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
                      p99 = u == "us" ? v / 1000 : u == "s" ? v * 1000 : v }
        END { print t, n, rps, p99, (reqs > 0 ? ticks * 1e6 / hz / reqs : 0) }' "$work/wrk.out" >>"$work/results"
}

tests=${BENCH_HTTP_TESTS:-16:4k.bin 100:4k.bin 16:1m.bin}
rep=1
while [ $rep -le "$REPS" ]; do
    for t in $tests; do
        c=${t%%:*} f=${t#*:}
        if [ $((rep % 2)) = 1 ]; then
            run microloop "$ml_port" "$c" "$f" $ml; run lighttpd "$lt_port" "$c" "$f" $lt
        else
            run lighttpd "$lt_port" "$c" "$f" $lt; run microloop "$ml_port" "$c" "$f" $ml
        fi
    done
    rep=$((rep + 1))
done

rss() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
ml_rss=$(rss $ml) lt_rss=$(rss $lt)

median() { sort -g | awk '{ v[NR] = $1 } END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -v t="$1" -v n="$2" -v k="$3" '$1 == t && $2 == n { print $k }' "$work/results" | median; }

printf '%s repetitions of %s s, medians\n' "$REPS" "$SECS"
printf '| test | http_file_server req/s | p99 | CPU/req | lighttpd (select) req/s | p99 | CPU/req | ratio |\n'
printf '|---|---|---|---|---|---|---|---|\n'
verdict=
for t in $tests; do
    c=${t%%:*} f=${t#*:}
    a=$(col "$f,$c" microloop 3) ap=$(col "$f,$c" microloop 4) ac=$(col "$f,$c" microloop 5)
    b=$(col "$f,$c" lighttpd 3) bp=$(col "$f,$c" lighttpd 4) bc=$(col "$f,$c" lighttpd 5)
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    want=$( [ "$f" = 1m.bin ] && echo 0.9 || echo 0.7 )
    verdict="$verdict $(awk -v r="$ratio" -v w="$want" -v t="$f/$c" \
        'BEGIN { printf "%s:%s(>=%s)", t, (r >= w ? "met" : "missed"), w }')"
    printf '| %s, %s connections | %.0f | %.2f ms | %.1f us | %.0f | %.2f ms | %.1f us | %sx |\n' \
        "$f" "$c" "$a" "$ap" "$ac" "$b" "$bp" "$bc" "$ratio"
done
printf '\npeak RSS: http_file_server %s kB, lighttpd %s kB\n' "$ml_rss" "$lt_rss"
printf 'targets:%s rss:%s\n' "$verdict" "$( [ "$ml_rss" -lt "$lt_rss" ] && echo met || echo missed)"
