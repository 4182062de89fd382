#!/bin/sh
# tests/adapters/strict.sh [ADAPTER...] - compile each adapter header (every
# public member instantiated) with g++ and clang++, C++11 and C++20, with and
# without exceptions and RTTI, under the strict warnings, as errors. Default:
# curl cares. Run from the top of the source tree.
set -eu
W="-Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion -Wold-style-cast -Werror"
tu() {
    case $1 in
    curl) cat <<'TU'
#include <microloop/adapters/curl.hpp>
int main() {
    microloop::loop<2, 2> l;
    microloop::curl_driver<microloop::loop<2, 2>, 4> d(l);
    d.on_done([](microloop::curl_done) {});
    CURL* e = curl_easy_init();
    int r = d.add(e) ? 1 : 0;
    r += d.remove(e) ? 1 : 0;
    r += static_cast<int>(d.in_flight()) + (d.last_error() ? 1 : 0) + static_cast<int>(d.last_mcode());
    curl_easy_cleanup(e);
    return d.multi() ? r : 1;
}
TU
    ;;
    cares) cat <<'TU'
#include <microloop/adapters/cares.hpp>
int main() {
    microloop::loop<2, 2> l;
    microloop::ares_driver<microloop::loop<2, 2> > d(l);
    l.poll();
    return (d.error() ? 1 : 0) + d.status() + (d.last_refused() ? 1 : 0) + static_cast<int>(d.timeouts()) +
           (d.channel() ? 0 : 1);
}
TU
    ;;
    esac
}
status=0
for a in ${*:-curl cares}; do
    for cxx in g++ clang++; do
        command -v $cxx >/dev/null || { echo "strict: $cxx missing: skipped"; continue; }
        for std in c++11 c++20; do
            for x in "" "-fno-exceptions -fno-rtti"; do
                if tu $a | $cxx -std=$std $W $x -Iinclude -x c++ -c -o /dev/null -; then
                    echo "strict: $a $cxx -std=$std $x: ok"
                else
                    echo "strict: $a $cxx -std=$std $x: FAILED"; status=1
                fi
            done
        done
    done
done
exit $status
