#!/bin/sh
# Builds and runs tests/consumer/consumer.cpp the ways a project takes microloop in:
#   1. CMake add_subdirectory() of the source tree
#   2. CMake find_package() after `cmake --install`, and pkg-config on the
#      microloop.pc it installs
#   3. pkg-config after `make install PREFIX=...`
#   4. `make install PREFIX=/usr DESTDIR=...` stages the right files (Buildroot/Yocto style)
#   5. one version everywhere: the macros in config.hpp, both microloop.pc
#      files, the CMake package, the usage guide and a CHANGELOG.md section
# Run from the top of the source tree. CXX selects the compiler (default c++).
set -eu
src=$(pwd)
test -f "$src/include/microloop.hpp" || { echo "run from the top of the microloop tree" >&2; exit 1; }
CXX=${CXX:-c++}
work=$(mktemp -d "${TMPDIR:-/tmp}/microloop-consumer.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
step() { printf '  consumer: %s\n' "$*"; }
quiet() { "$@" >"$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }; }

step "cmake add_subdirectory"
quiet cmake -S "$src/tests/consumer/add_subdirectory" -B "$work/sub" -DCMAKE_CXX_COMPILER="$CXX"
quiet cmake --build "$work/sub"
"$work/sub/consumer"
"$work/sub/consumer_core"
# The core target links nothing: no threads, no librt.
if grep -Eq -- '-pthread|-lpthread|-lrt|librt' "$work/sub/CMakeFiles/consumer_core.dir/link.txt"; then
    echo "microloop::core links a thread or rt library:" >&2
    cat "$work/sub/CMakeFiles/consumer_core.dir/link.txt" >&2; exit 1
fi
# A parent project gets no tests, examples or install rules from microloop.
if grep -q microloop_tests "$work/sub/Makefile" "$work/sub/microloop/Makefile" 2>/dev/null; then
    echo "add_subdirectory built microloop's tests" >&2; exit 1
fi

step "cmake --install, then find_package"
quiet cmake -S "$src" -B "$work/lib" -DCMAKE_INSTALL_PREFIX="$work/cmake-prefix" \
    -DMICROLOOP_BUILD_TESTS=OFF -DMICROLOOP_BUILD_EXAMPLES=OFF -DCMAKE_CXX_COMPILER="$CXX"
quiet cmake --install "$work/lib"
quiet cmake -S "$src/tests/consumer/find_package" -B "$work/pkg" -DCMAKE_PREFIX_PATH="$work/cmake-prefix" \
    -DCMAKE_CXX_COMPILER="$CXX"
quiet cmake --build "$work/pkg"
"$work/pkg/consumer"
"$work/pkg/consumer_core"
# cmake --install writes microloop.pc too (lib/ or lib/<multiarch>/).
pc=$(find "$work/cmake-prefix" -name microloop.pc)
test -n "$pc" || { echo "cmake --install wrote no microloop.pc" >&2; exit 1; }
flags=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --cflags --libs microloop)
# shellcheck disable=SC2086 # the flags are words
$CXX -std=c++11 -Wall -Wextra -Wpedantic -Werror -o "$work/cmake-pc-consumer" "$src/tests/consumer/consumer.cpp" $flags
"$work/cmake-pc-consumer"

step "make install, then pkg-config"
quiet make -C "$src" install PREFIX="$work/make-prefix"
flags=$(PKG_CONFIG_PATH="$work/make-prefix/lib/pkgconfig" pkg-config --cflags --libs microloop)
# shellcheck disable=SC2086 # the flags are words
$CXX -std=c++11 -Wall -Wextra -Wpedantic -Werror -o "$work/pc-consumer" "$src/tests/consumer/consumer.cpp" $flags
"$work/pc-consumer"

step "make install DESTDIR staging"
quiet make -C "$src" install PREFIX=/usr DESTDIR="$work/stage"
for f in usr/include/microloop.hpp usr/include/microloop/loop.hpp usr/lib/pkgconfig/microloop.pc; do
    test -f "$work/stage/$f" || { echo "missing $f in DESTDIR" >&2; exit 1; }
done
grep -qx 'prefix=/usr' "$work/stage/usr/lib/pkgconfig/microloop.pc" || { echo "bad prefix in microloop.pc" >&2; exit 1; }

step "one version: config.hpp, microloop.pc, the CMake package, the guide, CHANGELOG.md"
version=$(sed -n 's/^#define MICROLOOP_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$/\2/p' "$src/include/microloop/config.hpp" | paste -sd. -)
case $version in [0-9]*.[0-9]*.[0-9]*) ;; *) echo "no version in config.hpp: '$version'" >&2; exit 1 ;; esac
same() { # what, value
    [ "$2" = "$version" ] || { echo "version mismatch: $1 says '$2', config.hpp says $version" >&2; exit 1; }
}
same "make install's microloop.pc" "$(PKG_CONFIG_PATH="$work/make-prefix/lib/pkgconfig" pkg-config --modversion microloop)"
same "cmake --install's microloop.pc" "$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --modversion microloop)"
cv=$(find "$work/cmake-prefix" -name microloopConfigVersion.cmake)
same "microloopConfigVersion.cmake" "$(sed -n 's/^set(PACKAGE_VERSION "\(.*\)")$/\1/p' "$cv")"
for guide in include/microloop.hpp include/microloop/core.hpp; do
    same "the guide in $guide" "$(sed -n 's|^// Version \([0-9.]*[0-9]\)\..*|\1|p' "$src/$guide")"
done
grep -q "^## \[$version\]" "$src/CHANGELOG.md" || { echo "CHANGELOG.md has no section for $version" >&2; exit 1; }
echo "  consumer: version $version everywhere"
echo "  consumer: all ways in work"
