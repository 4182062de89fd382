# tests/adapters/adapters.mk - the adapters that host other libraries on
# microloop (include/microloop/adapters/), their tests and their examples
# (included from the Makefile).
#
#   make integrations      builds and runs the test and builds the examples of
#                          every adapter whose library pkg-config finds; names
#                          the ones it skips and why
#   make integrations-deps installs every hosted library and the peers the
#                          tests start (a broker, a bus) with apt-get
#
# An adapter NAME has include/microloop/adapters/NAME.hpp, its test
# tests/adapters/test_NAME.cpp (Catch2, linked with tests/main.cpp) and its
# examples examples/adapters/NAME_*.cpp. ADAPTER_PKGS_NAME lists its
# pkg-config modules. The tests start their own peers on loopback (a local
# HTTP server, a mosquitto broker, a private dbus-daemon, a stub DNS server)
# and stop them.
ADAPTERS := curl mosquitto glib cares sdbus
ADAPTER_PKGS_curl := libcurl
ADAPTER_PKGS_mosquitto := libmosquitto
ADAPTER_PKGS_glib := glib-2.0 gio-2.0
ADAPTER_PKGS_cares := libcares
ADAPTER_PKGS_sdbus := libsystemd
# Debian packages: the libraries, and the programs the tests run.
ADAPTER_DEBS := libcurl4-openssl-dev libmosquitto-dev mosquitto libglib2.0-dev libc-ares-dev libsystemd-dev \
                dbus-daemon pkg-config python3 curl
PKG_CONFIG ?= pkg-config
# A library's headers are not ours to keep warning-free: -isystem, not -I.
adapter_cflags = $(patsubst -I%,-isystem %,$(shell $(PKG_CONFIG) --cflags $(1)))

.PHONY: integrations integrations-deps bench-curl

# One adapter: build its test and examples, run its test. $(1): the name.
define adapter_rules
$(BUILD)/adapters/test_$(1): tests/adapters/test_$(1).cpp $(BUILD)/tests/main.o $(wildcard include/microloop/adapters/$(1).hpp) | $(BUILD)/adapters/
	$$(COMPILE) -MMD -MP $$(call adapter_cflags,$(ADAPTER_PKGS_$(1))) -o $$@ $$< $(BUILD)/tests/main.o \
	    $$(ML_LDFLAGS) $$(LDFLAGS) $$(shell $(PKG_CONFIG) --libs $(ADAPTER_PKGS_$(1))) $$(LDLIBS) $$(CATCH2_LIBS) $$(ML_LDLIBS)
$(BUILD)/adapters/$(1)_%: examples/adapters/$(1)_%.cpp $(wildcard include/microloop/adapters/$(1).hpp) | $(BUILD)/adapters/
	$$(COMPILE) -MMD -MP $$(call adapter_cflags,$(ADAPTER_PKGS_$(1))) -o $$@ $$< \
	    $$(ML_LDFLAGS) $$(LDFLAGS) $$(shell $(PKG_CONFIG) --libs $(ADAPTER_PKGS_$(1))) $$(LDLIBS) $$(ML_LDLIBS)
endef
$(foreach a,$(ADAPTERS),$(eval $(call adapter_rules,$(a))))
-include $(wildcard $(BUILD)/adapters/*.d)

$(BUILD)/adapters/:
	mkdir -p $@

# Skipped: no library (pkg-config), or no test yet. Failed: the build or the
# test. The status is non-zero if any adapter failed, or, with
# INTEGRATIONS_REQUIRE=1 (CI), if any was skipped.
INTEGRATIONS_REQUIRE ?= 0
# The curl test downloads from the project's own http_file_server.
integrations: $(BUILD)/tests/main.o $(BUILD)/examples/http_file_server
	@set -u; failed=; ran=; skipped=; \
	one() { a=$$1; pkgs=$$2; \
	    if [ ! -f tests/adapters/test_$$a.cpp ]; then skipped="$$skipped $$a(no test yet)"; return; fi; \
	    if ! $(PKG_CONFIG) --exists $$pkgs; then skipped="$$skipped $$a($$pkgs not found)"; return; fi; \
	    exes=$$(for e in examples/adapters/$${a}_*.cpp; do [ -f "$$e" ] && echo $(BUILD)/adapters/$$(basename "$$e" .cpp); done); \
	    echo "==== adapter $$a ($$pkgs)"; \
	    if $(MAKE) --no-print-directory $(BUILD)/adapters/test_$$a $$exes && \
	       BUILD="$(BUILD)" $(RUNNER) $(BUILD)/adapters/test_$$a $(TEST_ARGS); then ran="$$ran $$a"; \
	    else failed="$$failed $$a"; fi; }; \
	$(foreach a,$(ADAPTERS),one $(a) "$(ADAPTER_PKGS_$(a))";) \
	echo "integrations: ran:$${ran:- none}; skipped:$${skipped:- none}; failed:$${failed:- none}"; \
	[ -z "$$failed" ] && { [ "$(INTEGRATIONS_REQUIRE)" != 1 ] || [ -z "$$skipped" ]; }

integrations-deps:
	@sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	missing=$$(dpkg-query -W -f='$${db:Status-Status} $${Package}\n' $(ADAPTER_DEBS) 2>&1 | grep -v '^installed ' || true); \
	if [ -z "$$missing" ]; then echo "integrations-deps: all present"; \
	else $$sudo apt-get install -y --no-install-recommends $(ADAPTER_DEBS) || \
	    { $$sudo apt-get update && $$sudo apt-get install -y --no-install-recommends $(ADAPTER_DEBS); }; fi

# QoS-0 messages/s through a local broker: the mosquitto adapter against
# mosquitto_loop_forever() (tests/bench/mqtt.sh).
.PHONY: bench-mqtt
bench-mqtt:
	$(BENCH_ENV) sh tests/bench/mqtt.sh

# The curl adapter against curl's own curl_multi_poll() loop, 200 downloads
# from the local http_file_server (tests/bench/curl.sh; not part of make bench).
$(BUILD)/bench/curl_bench: tests/bench/curl_bench.cpp $(wildcard include/microloop/adapters/curl.hpp)
	mkdir -p $(dir $@)
	$(COMPILE) -o $@ $< $(ML_LDFLAGS) $(LDFLAGS) $(shell $(PKG_CONFIG) --libs $(ADAPTER_PKGS_curl)) $(LDLIBS) $(ML_LDLIBS)
bench-curl: $(BUILD)/bench/curl_bench $(BUILD)/examples/http_file_server
	BUILD="$(BUILD)" sh tests/bench/curl.sh
