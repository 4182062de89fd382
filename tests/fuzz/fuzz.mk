# tests/fuzz/fuzz.mk - `make fuzz`: the libFuzzer target tests/fuzz/fuzz_loop.cpp,
# built with clang++ and ASan/UBSan into $(BUILD)/fuzz/ and run for FUZZ_TIME
# seconds (default 30) from a small seed corpus made on the fly (never
# committed). Included from the Makefile.
#
#   make fuzz                          30 s
#   make fuzz FUZZ_TIME=3600 BUILD=build-fuzz
#   make fuzz FUZZ_ARGS='-jobs=2'      more libFuzzer options
#
# A crash leaves the input in $(BUILD)/fuzz/ (crash-*); replay it with
#   $(BUILD)/fuzz/fuzz_loop $(BUILD)/fuzz/crash-...

FUZZ_CXX ?= clang++
FUZZ_TIME ?= 30
FUZZ_ARGS ?=
FUZZ_DIR = $(BUILD)/fuzz
FUZZ_BIN = $(FUZZ_DIR)/fuzz_loop
FUZZ_FLAGS = -std=c++11 -O1 -g -Iinclude -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -fno-omit-frame-pointer

.PHONY: fuzz fuzz-build

fuzz: $(FUZZ_BIN)
	@rm -rf $(FUZZ_DIR)/corpus && mkdir -p $(FUZZ_DIR)/corpus
	@# Seeds: a few byte patterns that reach polls, timers and table_full early.
	@printf '\000\000\000\000' > $(FUZZ_DIR)/corpus/polls
	@printf '\030\001\003\030\002\001\000\000\074\002\000\000' > $(FUZZ_DIR)/corpus/watch-poll
	@printf '\124\001\005\124\002\007\000\000\004\003\000\000' > $(FUZZ_DIR)/corpus/timers
	@head -c 512 /dev/zero | tr '\000' '\177' > $(FUZZ_DIR)/corpus/uniform
	cd $(FUZZ_DIR) && ./fuzz_loop -max_total_time=$(FUZZ_TIME) -max_len=4096 -print_final_stats=1 \
	    $(FUZZ_ARGS) corpus

fuzz-build: $(FUZZ_BIN)

$(FUZZ_BIN): tests/fuzz/fuzz_loop.cpp tests/model.hpp $(HEADERS)
	mkdir -p $(FUZZ_DIR)
	$(FUZZ_CXX) $(FUZZ_FLAGS) $(CPPFLAGS) $(CXXFLAGS) -o $@ tests/fuzz/fuzz_loop.cpp $(LDFLAGS)
