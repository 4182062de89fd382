# tests/strict/strict.mk - `make check-strict`, included by the Makefile.
#
# A team that vendors microloop builds it with its own flags, often with
# -Werror: the header must not warn under any of them. This compiles and
# links every public template, instantiated for each capacity
# (tests/strict/every_call.hpp), through the single header
# (tests/strict/instantiate.cpp) and through include/
# (tests/strict/instantiate_tree.cpp), with:
#   - g++ and clang++ on the host, and the cross g++ of STRICT_CROSS;
#   - C++11, 14, 17, 20 and 23 (c++2b where the compiler lacks c++23);
#   - -O0, -O2 and -Os (some warnings, -Warray-bounds among them, exist
#     only when the optimiser runs);
#   - include/ at -O0 only (STRICT_TREE_OPTS: the optimiser sees the same
#     code as in the single header);
#   - plus one -fno-exceptions -fno-rtti build per compiler, and one with a
#     64-bit time_t and off_t for the 32-bit targets of STRICT_TIME64
#     (time_t is then int64_t: a cast that converts elsewhere is useless).
# Each build is one compiler run; it prints nothing when clean, and its
# diagnostics and exact command when not. Parallel: `make -j2 check-strict`.
# `make -k check-strict` lists every failure at once.
#
# Variables: STRICT_GXX, STRICT_CLANGXX (host compilers), STRICT_CROSS
# (toolchain prefixes; empty: host only), STRICT_TIME64 (compiler names),
# STRICT_STDS, STRICT_OPTS, STRICT_TREE_OPTS.
# CPPFLAGS, CXXFLAGS and LDFLAGS are appended, as everywhere.

STRICT_GXX ?= g++
STRICT_CLANGXX ?= clang++
STRICT_CROSS ?= arm-linux-gnueabihf- mips-linux-gnu-
STRICT_TIME64 ?= $(filter arm-linux-gnueabihf,$(STRICT_COMPILERS))
STRICT_STDS ?= c++11 c++14 c++17 c++20 c++23
STRICT_OPTS ?= -O0 -O2 -Os
STRICT_TREE_OPTS ?= -O0
STRICT_DIR = $(BUILD)/strict

STRICT_WARNINGS := -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion -Wold-style-cast \
    -Wcast-align -Wnull-dereference -Wdouble-promotion -Wformat=2 -Wundef -Werror
STRICT_WARNINGS_GCC := -Wuseless-cast # clang has no such warning

# The two translation units: source, include path, what they depend on.
STRICT_TUS := single tree
strict_src_single := tests/strict/instantiate.cpp
strict_inc_single := -Isingle_include
strict_dep_single := single_include/microloop.hpp
strict_src_tree := tests/strict/instantiate_tree.cpp
strict_inc_tree := -Iinclude
strict_dep_tree := $(HEADERS)
# Both hold the same text, so what the optimiser finds, it finds in the single
# header: include/ is built at STRICT_TREE_OPTS (-O0) only, for every compiler
# and standard, which halves the check's time.
strict_opts_single = $(STRICT_OPTS)
strict_opts_tree = $(STRICT_TREE_OPTS)

# Compilers, by name: gcc, clang, and each cross prefix without its dash.
STRICT_COMPILERS := gcc clang $(foreach p,$(STRICT_CROSS),$(patsubst %-,%,$(notdir $(p))))
strict_cxx_gcc = $(STRICT_GXX)
strict_cxx_clang = $(STRICT_CLANGXX)
$(foreach p,$(STRICT_CROSS),$(eval strict_cxx_$(patsubst %-,%,$(notdir $(p))) = $(p)g++))
strict_warnings = $(STRICT_WARNINGS) $(if $(filter clang,$1),,$(STRICT_WARNINGS_GCC))

# -std=c++23, or c++2b for a compiler that lacks the name (clang 14). Asked
# once per compiler, and only when a c++23 build runs.
strict_std23 = $(if $(strict_std23_$1),,$(eval strict_std23_$1 := $(shell \
    $(strict_cxx_$1) -std=c++23 -x c++ -E -o /dev/null /dev/null 2>/dev/null && echo c++23 || echo c++2b)))$(strict_std23_$1)
strict_std = $(if $(filter c++23,$2),$(call strict_std23,$1),$2)

# $(call strict_cmd,compiler,std,opt,tu,extra flags,output)
strict_cmd = $(strict_cxx_$1) -std=$(call strict_std,$1,$2) $3 $5 $(call strict_warnings,$1) \
    $(strict_inc_$4) $(CPPFLAGS) $(CXXFLAGS) -pthread -o $6 $(strict_src_$4) $(LDFLAGS) -lrt

# One build: $(STRICT_DIR)/COMPILER/STD-OPT[-VARIANT]-TU. Its diagnostics go
# to a .log beside it, shown whole on failure (no interleaving under -j).
define strict_build # compiler, std, opt, tu, extra flags, variant
STRICT_BINS += $(STRICT_DIR)/$1/$2$3$6-$4
$(STRICT_DIR)/$1/$2$3$6-$4: $(strict_src_$4) tests/strict/every_call.hpp $(strict_dep_$4) tests/strict/strict.mk
	@mkdir -p $$(@D)
	@$$(call strict_cmd,$1,$2,$3,$4,$5,$$@) 2>$$@.log || { \
	    cat $$@.log >&2; printf 'check-strict FAILED: %s\n' '$$(strip $$(call strict_cmd,$1,$2,$3,$4,$5,$$@))' >&2; exit 1; }
endef

STRICT_BINS :=
$(foreach c,$(STRICT_COMPILERS),$(foreach s,$(STRICT_STDS),$(foreach t,$(STRICT_TUS),$(foreach o,$(strict_opts_$t),\
    $(eval $(call strict_build,$c,$s,$o,$t,,))))))
$(foreach c,$(STRICT_COMPILERS),\
    $(eval $(call strict_build,$c,c++11,-O2,single,-fno-exceptions -fno-rtti,-noexcept)))
$(foreach c,$(STRICT_TIME64),\
    $(eval $(call strict_build,$c,c++11,-O2,single,-D_TIME_BITS=64 -D_FILE_OFFSET_BITS=64,-time64)))

.PHONY: check-strict
check-strict: $(STRICT_BINS)
	@echo "check-strict: $(words $(STRICT_BINS)) builds, no warning"
