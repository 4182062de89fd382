# tests/servers/servers.mk - the example servers against real clients
# (included from the Makefile).
#
#   make servers-check     builds the examples, runs tests/servers/*_test.py
#
# Loopback only; every client is bounded in count and time. Needs python3,
# curl, wrk and prlimit (util-linux): `make servers-deps` installs them with
# apt-get. Runs on the build machine: not with CROSS_COMPILE.
SERVER_TESTS := $(sort $(wildcard tests/servers/*_test.py))

.PHONY: servers-check servers-deps

servers-check: examples
	@set -e; for t in $(SERVER_TESTS); do \
	    echo "==== $$t"; BUILD="$(BUILD)" timeout 300 $(PYTHON) $$t; \
	done

servers-deps:
	@missing=; for c in curl wrk prlimit; do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -z "$$missing" ]; then echo "servers-deps: all present"; \
	else sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	    pkgs=$$(echo "$$missing" | sed 's/prlimit/util-linux/'); \
	    $$sudo apt-get install -y $$pkgs || { $$sudo apt-get update && $$sudo apt-get install -y $$pkgs; }; fi

# `make test-deps` installs these too.
test-deps: servers-deps

# The HTTP part of the benchmarks: http_file_server against lighttpd (select),
# with wrk (tests/bench/http.sh). `make bench` runs it first.
.PHONY: bench-http
bench-http: $(BUILD)/examples/http_file_server
	BUILD="$(BUILD)" sh tests/bench/http.sh
bench: bench-http
