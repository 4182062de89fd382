#!/bin/sh
# tests/bench/mqtt.sh - `make bench-mqtt`: QoS-0 messages per second through a
# local mosquitto broker, one client driven by microloop's adapter
# (include/microloop/adapters/mosquitto.hpp) and the same client driven by
# mosquitto_loop_forever(), each in a process of its own, in the same run:
# interleaved repetitions, medians, the ratio (tests/bench/mqtt_bench.cpp).
#
# Environment: CXX, CXXFLAGS, BUILD / BENCH_OUT, BENCH_REPS (default 5),
# BENCH_QUICK=1, MQTT_N (messages per run, 200000), MQTT_W (window, 500),
# MOSQUITTO (the broker, /usr/sbin/mosquitto). Raw numbers: $OUT/mqtt.txt.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-build}
OUT=${BENCH_OUT:-$BUILD/bench}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
RAW=$OUT/mqtt.txt
CXX=${CXX:-g++}
REPS=${BENCH_REPS:-5}
N=${MQTT_N:-200000}
W=${MQTT_W:-500}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
if [ "${BENCH_QUICK:-0}" = 1 ]; then REPS=2 N=20000; fi
note() { echo "bench-mqtt: $*" >&2; }

command -v pkg-config >/dev/null && pkg-config --exists libmosquitto || { note "libmosquitto not found (make integrations-deps)"; exit 1; }
[ -x "$MOSQUITTO" ] || { note "no broker at $MOSQUITTO"; exit 1; }
# shellcheck disable=SC2046,SC2086
$CXX -std=c++11 -O2 -DNDEBUG -Wall -Wextra ${CXXFLAGS:-} -I"$ROOT/include" $(pkg-config --cflags libmosquitto) \
    -o "$OUT/mqtt_bench" "$ROOT/tests/bench/mqtt_bench.cpp" -pthread $(pkg-config --libs libmosquitto) \
    2>"$OUT/build-mqtt.log" || { note "build failed:"; cat "$OUT/build-mqtt.log" >&2; exit 1; }

TMP=$(mktemp -d) || exit 1
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 18883)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$PORT" >"$TMP/mosquitto.conf"
"$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$TMP/broker.log" 2>&1 &
BROKER=$!
trap 'kill $BROKER 2>/dev/null; wait $BROKER 2>/dev/null; rm -rf "$TMP"' EXIT INT TERM
sleep 0.3

{
    echo "# microloop mqtt bench $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "# nproc=$(nproc 2>/dev/null) cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ *//')"
    echo "# CXX=$($CXX --version 2>/dev/null | head -n 1) libmosquitto=$(pkg-config --modversion libmosquitto) reps=$REPS N=$N W=$W"
} >"$RAW"
i=0
while [ $i -lt "$REPS" ]; do
    for mode in microloop forever; do
        timeout 120 "$OUT/mqtt_bench" $mode "$PORT" "$N" "$W" >>"$RAW" || { note "$mode run $i failed"; exit 1; }
    done
    i=$((i + 1))
done
awk '
    /^#/ { print; next }
    { v[$1, ++n[$1]] = $4 }
    function med(k,   m, i, j, t, a) {
        m = n[k]; for (i = 1; i <= m; i++) a[i] = v[k, i]
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
    }
    END {
        ml = med("microloop"); fe = med("forever")
        printf "%-22s %12s\n", "driver", "msgs/s (median)"
        printf "%-22s %12.0f\n", "microloop adapter", ml
        printf "%-22s %12.0f\n", "mosquitto_loop_forever", fe
        printf "ratio microloop/forever: %.2fx (%d reps each)\n", ml / fe, n["microloop"]
    }' "$RAW"
