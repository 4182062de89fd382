# microloop - GNU make build: tests, examples, the single header, install.
# The library is header-only; nothing here is needed to use it.
#
#   make demo                      build and run examples/demo.cpp
#   make test-deps test            install Catch2 if missing, run the test suite
#   make examples                  build every examples/*.cpp into $(BUILD)/examples/
#   make check                     the suite with -Werror (developer/CI)
#   make single_include            regenerate single_include/microloop.hpp and microloop_core.hpp
#   make check-amalgamation        fail if single_include/ is out of date
#   make install PREFIX=/usr DESTDIR=/tmp/stage
#   make CROSS_COMPILE=arm-linux-gnueabihf- test     cross-build, run under qemu-user
#   make fuzz                      libFuzzer on API sequences (clang++), 30 s; see tests/fuzz/fuzz.mk
#   make integrations              the adapters (libcurl, libmosquitto, GLib, c-ares, sd-bus) that
#                                  pkg-config finds: their tests and examples; see tests/adapters/adapters.mk
#
# Variables (all optional): CXX CXXFLAGS CPPFLAGS LDFLAGS LDLIBS are appended
# to what the build needs, never replace it. CROSS_COMPILE, BUILD, STD,
# WERROR, SANITIZE, RUNNER, TEST_ARGS, EXAMPLE_LDFLAGS, PREFIX, DESTDIR: see README.md.

.SUFFIXES:
.DELETE_ON_ERROR:

# ---- toolchain ----------------------------------------------------------------
# make predefines CXX=g++, so `CXX ?= $(CROSS_COMPILE)g++` would silently
# ignore CROSS_COMPILE. Replace CXX only when nobody set it.
CROSS_COMPILE ?=
ifneq ($(filter default undefined,$(origin CXX)),)
CXX := $(CROSS_COMPILE)g++
endif
PYTHON ?= python3

BUILD ?= build
STD ?= c++11
WERROR ?= 0
SANITIZE ?=
OPT ?= -O2 -g
TU_OPT = $(OPT)

# What the build needs. The user's CPPFLAGS/CXXFLAGS/LDFLAGS/LDLIBS come after
# these, so `make CXXFLAGS=-O0` wins over the -O2 of OPT.
ML_CPPFLAGS := -Iinclude
ML_CXXFLAGS = -std=$(STD) $(TU_OPT) -pthread -Wall -Wextra -Wpedantic
ML_LDFLAGS := -pthread
ML_LDLIBS := -lrt # AIO lives in librt before glibc 2.34; an empty stub after
ifeq ($(WERROR),1)
ML_CXXFLAGS += -Werror
endif
ifneq ($(SANITIZE),)
ML_CXXFLAGS += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
ML_LDFLAGS += -fsanitize=$(SANITIZE)
endif

COMPILE = $(CXX) $(ML_CPPFLAGS) $(EXTRA_CPPFLAGS) $(CPPFLAGS) $(ML_CXXFLAGS) $(EXTRA_CXXFLAGS) $(CXXFLAGS)
LINK = $(CXX) $(ML_CXXFLAGS) $(CXXFLAGS) $(ML_LDFLAGS) $(LDFLAGS)

# ---- cross-compiling: run target binaries under qemu-user ---------------------
# arm-linux-gnueabihf- -> qemu-arm with the target's libraries from
# /usr/arm-linux-gnueabihf (Debian's cross packages put them there).
TRIPLET := $(patsubst %-,%,$(notdir $(CROSS_COMPILE)))
QEMU_ARCH := $(firstword $(subst -, ,$(TRIPLET)))
QEMU_ARCH := $(patsubst arm%,arm,$(patsubst armeb%,armeb,$(patsubst i%86,i386,$(QEMU_ARCH))))
QEMU_ARCH := $(patsubst powerpc64le,ppc64le,$(patsubst powerpc64,ppc64,$(patsubst powerpc,ppc,$(QEMU_ARCH))))
QEMU_LD_PREFIX ?= /usr/$(TRIPLET)
ifneq ($(CROSS_COMPILE),)
RUNNER ?= qemu-$(QEMU_ARCH) -L $(QEMU_LD_PREFIX)
else
RUNNER ?=
endif

# ---- sources ----------------------------------------------------------------------
# Every header of the library: the umbrella and include/microloop/ with its
# subfolders (backend/, detail/, aio/), without the adapters, which each need
# a library of their own (make integrations).
HEADERS := include/microloop.hpp $(sort $(wildcard include/microloop/*.hpp include/microloop/*/*.hpp))
HEADERS := $(filter-out include/microloop/adapters/%,$(HEADERS))
TEST_SRCS := $(sort $(wildcard tests/*.cpp))
TEST_OBJS := $(TEST_SRCS:tests/%.cpp=$(BUILD)/tests/%.o)
TEST_BIN := $(BUILD)/tests/microloop_tests
EXAMPLE_SRCS := $(sort $(wildcard examples/*.cpp))
EXAMPLE_BINS := $(EXAMPLE_SRCS:examples/%.cpp=$(BUILD)/examples/%)
TEST_ARGS ?=

# Catch2: v2 is one header (<catch2/catch.hpp>, tests/main.cpp supplies
# main()); v3 (<catch2/catch_all.hpp>) is a library with its own main. The
# probe runs once, and only when a test target needs it.
CATCH2_V3 = $(eval CATCH2_V3 := $(shell printf '\043include <catch2/catch_all.hpp>\n' | \
    $(CXX) $(ML_CPPFLAGS) $(CPPFLAGS) -std=c++14 -x c++ -E -o /dev/null - 2>/dev/null && echo 1))$(CATCH2_V3)
CATCH2_LIBS = $(if $(CATCH2_V3),-lCatch2Main -lCatch2)
# A cross compiler does not search /usr/include, and must not: give it the
# header-only Catch2 v2 alone, through a directory holding just a link to it.
CATCH2_HOST_DIR ?= $(firstword $(wildcard /usr/local/include/catch2/catch.hpp /usr/include/catch2/catch.hpp))
ifneq ($(CROSS_COMPILE),)
ifneq ($(CATCH2_HOST_DIR),)
CATCH2_LINK := $(BUILD)/catch2-include/catch2
$(BUILD)/tests/%.o: EXTRA_CPPFLAGS = -isystem $(BUILD)/catch2-include
endif
# armhf g++ notes an ABI change of GCC 7.1 in Catch2's code, at length.
$(BUILD)/tests/%.o: EXTRA_CXXFLAGS = -Wno-psabi
endif

.PHONY: all test check check-guarantees examples demo test-deps single_include check-amalgamation check-headers \
        vendor-check consumer-check install uninstall bench bench-threads bench-aio size clean

all: examples $(TEST_BIN)

# ---- tests ------------------------------------------------------------------------
test: $(TEST_BIN)
	$(RUNNER) $(TEST_BIN) $(TEST_ARGS)

# The developer/CI gate: the suite with warnings as errors.
check:
	$(MAKE) WERROR=1 test

# Every test the README's Guarantees table names exists in the suite.
check-guarantees: $(TEST_BIN)
	sh tests/check_guarantees.sh $(TEST_BIN) $(RUNNER)

$(TEST_BIN): $(TEST_OBJS)
	@test -n "$(TEST_OBJS)" || { echo "no tests/*.cpp to build" >&2; exit 1; }
	$(LINK) -o $@ $(TEST_OBJS) $(LDLIBS) $(CATCH2_LIBS) $(ML_LDLIBS)

# `make test-deps test` under -j: test-deps must finish before compiling.
$(BUILD)/tests/%.o: tests/%.cpp | $(BUILD)/tests/ $(CATCH2_LINK) $(filter test-deps,$(MAKECMDGOALS))
	$(COMPILE) -MMD -MP -c -o $@ $<

# Catch2's test runner (tests/main.cpp) takes 35 s to compile with -O2 and
# under 10 s without; optimising it buys nothing, and with sanitizers g++ 12
# warns about libstdc++'s <regex> in it. Whatever OPT is, it gets -O0.
$(BUILD)/tests/main.o: TU_OPT = -O0

$(CATCH2_LINK): | $(BUILD)/tests/
	mkdir -p $(dir $@)
	ln -sfn $(dir $(CATCH2_HOST_DIR)) $@

-include $(TEST_OBJS:.o=.d)

# Installs the one test dependency, Catch2, if the compiler cannot find it:
# with apt-get, through sudo unless already root.
test-deps:
	@if printf '#include <catch2/catch.hpp>\n' | $(CXX) $(CPPFLAGS) -x c++ -E -o /dev/null - 2>/dev/null || \
	    printf '#include <catch2/catch_all.hpp>\n' | $(CXX) $(CPPFLAGS) -std=c++14 -x c++ -E -o /dev/null - 2>/dev/null || \
	    test -n "$(CATCH2_HOST_DIR)"; then \
	    echo "test-deps: Catch2 found"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	    sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	    echo "test-deps: installing catch2 with apt-get"; \
	    $$sudo apt-get install -y catch2 || { $$sudo apt-get update && $$sudo apt-get install -y catch2; }; \
	else \
	    echo "test-deps: please install Catch2 (v2 or v3) with your package manager" >&2; exit 1; \
	fi

# ---- examples ---------------------------------------------------------------------
examples: $(EXAMPLE_BINS)

demo: $(BUILD)/examples/demo
	$(RUNNER) $(BUILD)/examples/demo

# The examples link libstdc++ and libgcc statically and drop unused shared
# libraries: they need little of libstdc++ (its exception support), which
# linked statically is all they take in, while the shared copy (with the
# libm it pulls in) costs about 1.2 MB of resident memory a process
# (http_file_server idles at 1.8 MB instead of 3.0 MB). Not under a
# sanitizer, whose runtime wants the shared libstdc++. EXAMPLE_LDFLAGS=
# links them as any other program.
EXAMPLE_LDFLAGS ?= $(if $(SANITIZE),,-static-libstdc++ -static-libgcc) -Wl,--as-needed

$(BUILD)/examples/%: examples/%.cpp | $(BUILD)/examples/
	$(COMPILE) -MMD -MP $(ML_LDFLAGS) $(EXAMPLE_LDFLAGS) $(LDFLAGS) -o $@ $< $(LDLIBS) $(ML_LDLIBS)

-include $(EXAMPLE_BINS:=.d)

$(BUILD)/tests/ $(BUILD)/examples/:
	mkdir -p $@

# ---- the single header --------------------------------------------------------------
# include/ is the source of truth; single_include/microloop.hpp (everything)
# and single_include/microloop_core.hpp (the core alone: fd, timers,
# signals, continuations; libc only) are generated from it and checked in,
# so vendoring is copying one file.
AMALGAMATE = $(PYTHON) single_include/amalgamate.py
single_include:
	$(AMALGAMATE) include/microloop.hpp single_include/microloop.hpp
	$(AMALGAMATE) --core include/microloop/core.hpp single_include/microloop_core.hpp

check-amalgamation:
	@mkdir -p $(BUILD)
	$(AMALGAMATE) include/microloop.hpp $(BUILD)/microloop.amalgamated.hpp
	$(AMALGAMATE) --core include/microloop/core.hpp $(BUILD)/microloop_core.amalgamated.hpp
	@for f in microloop microloop_core; do \
	    if cmp -s $(BUILD)/$$f.amalgamated.hpp single_include/$$f.hpp; then \
	        echo "single_include/$$f.hpp is up to date"; \
	    else \
	        diff -u single_include/$$f.hpp $(BUILD)/$$f.amalgamated.hpp | head -n 40; \
	        echo "single_include/$$f.hpp is out of date: run 'make single_include'" >&2; exit 1; \
	    fi; \
	done

# Every public header compiles on its own, strictly, without exceptions or RTTI.
check-headers: | $(BUILD)/tests/
	@set -e; for h in $(HEADERS:include/%=%) single_include/microloop.hpp single_include/microloop_core.hpp; do \
	    echo "  header $$h"; \
	    printf '#include "%s"\nint main() { return 0; }\n' "$$h" | \
	    $(CXX) -Iinclude -I. $(CPPFLAGS) -std=$(STD) -Wall -Wextra -Wpedantic -Werror -Wshadow \
	        -fno-exceptions -fno-rtti $(CXXFLAGS) -x c++ -c -o /dev/null -; \
	done

include tests/strict/strict.mk # check-strict: every template, strict warnings, many compilers

# Vendoring and packaging: the single header alone, the include/ tree, pkg-config,
# and CMake add_subdirectory / find_package consumers.
vendor-check:
	CXX="$(CXX)" RUNNER="$(RUNNER)" sh tests/vendor_check.sh
consumer-check:
	CXX="$(CXX)" sh tests/consumer/run.sh

# ---- install (header-only: headers and a pkg-config file) ------------------------------
PREFIX ?= /usr/local
INCLUDEDIR ?= $(PREFIX)/include
LIBDIR ?= $(PREFIX)/lib
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
VERSION := $(shell sed -n 's/^\#define MICROLOOP_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)/\2/p' \
    include/microloop/config.hpp | paste -sd. -)
INSTALL ?= install
# microloop.pc is written by the install recipe; CMakeLists.txt writes the same lines.
PC_DESCRIPTION := Header-only select() event loop for embedded Linux (C++11)

install:
	$(INSTALL) -d $(DESTDIR)$(INCLUDEDIR)/microloop $(DESTDIR)$(PKGCONFIGDIR)
	@set -e; for h in $(HEADERS:include/%=%); do \
	    echo "$(INSTALL) -D -m 644 include/$$h $(DESTDIR)$(INCLUDEDIR)/$$h"; \
	    $(INSTALL) -D -m 644 include/$$h $(DESTDIR)$(INCLUDEDIR)/$$h; \
	done
	printf '%s\n' 'prefix=$(PREFIX)' 'includedir=$(patsubst $(PREFIX)/%,$${prefix}/%,$(INCLUDEDIR))' '' \
	    'Name: microloop' 'Description: $(PC_DESCRIPTION)' 'Version: $(VERSION)' \
	    'Cflags: -I$${includedir} -pthread' 'Libs: -pthread -lrt' > $(DESTDIR)$(PKGCONFIGDIR)/microloop.pc
	chmod 644 $(DESTDIR)$(PKGCONFIGDIR)/microloop.pc

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/microloop.hpp $(DESTDIR)$(PKGCONFIGDIR)/microloop.pc
	rm -f $(addprefix $(DESTDIR)$(INCLUDEDIR)/,$(HEADERS:include/%=%))
	-rmdir $(sort $(dir $(addprefix $(DESTDIR)$(INCLUDEDIR)/,$(filter microloop/%/%,$(HEADERS:include/%=%))))) 2>/dev/null
	-rmdir $(DESTDIR)$(INCLUDEDIR)/microloop

include tests/fuzz/fuzz.mk

# ---- benchmarks and footprint (tests/bench/) -------------------------------------------
# Both scripts belong to tests/bench/; they get the toolchain through the environment.
# tests/bench/ is not part of the unit-test build, which takes tests/*.cpp only.
BENCH_ENV = CXX="$(CXX)" CXXFLAGS="$(CXXFLAGS)" CPPFLAGS="$(CPPFLAGS)" BUILD="$(BUILD)" RUNNER="$(RUNNER)"
bench size: script = $(if $(filter bench,$@),tests/bench/run.sh,tests/bench/footprint.sh)
bench size:
	@test -f $(script) || { echo "$(script) does not exist yet" >&2; exit 1; }
	$(BENCH_ENV) $(if $(shell test -x $(script) && echo x),./$(script),sh $(script))

# The worker pool and the mailbox against libuv (tests/bench/threads.sh).
bench-threads:
	$(BENCH_ENV) sh tests/bench/threads.sh

# aio<N>'s engines against libuv's uv_fs_read (tests/bench/aio.sh).
bench-aio:
	$(BENCH_ENV) sh tests/bench/aio.sh

clean:
	rm -rf $(BUILD)

# The example servers against real clients: make servers-check.
include tests/servers/servers.mk

# The adapters for other libraries: make integrations.
include tests/adapters/adapters.mk
