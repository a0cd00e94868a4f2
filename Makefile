# idpd - identity control plane for enterprises whose actors include AI agents.
#
#   make            build bin/idpd
#   make run        private PostgreSQL under ./var/ + idpd on 127.0.0.1:8080
#   make test       every unit and integration test, ends with "N passed, N failed"
#   make sanitize   the whole test suite under ASan+UBSan
#   make fuzz       libFuzzer targets, each for FUZZ_SECONDS
#   make bench      benchmarks; figures go to docs/benchmarks.md
#   make deps       install the Debian packages that are missing
#
# Each module lists its own sources in src/<module>/module.mk, so adding a
# file is an explicit, reviewed change.

CC      ?= cc
STD      = -std=c11 -D_GNU_SOURCE
WARN     = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wpointer-arith -Wvla -Wformat=2
OPT      = -O2 -g
SAN      =
DEFS     =
PKGS     = libmicrohttpd libpq jansson libssl libcrypto
TESTPKGS = cmocka libcurl libjwt

BUILD   ?= build
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
TEST_CFLAGS := $(shell pkg-config --cflags $(TESTPKGS) 2>/dev/null)
TEST_LIBS   := $(shell pkg-config --libs $(TESTPKGS) 2>/dev/null)

CFLAGS_ALL = $(STD) $(WARN) $(OPT) $(SAN) $(DEFS) -Iinclude $(PKG_CFLAGS) -pthread -MMD -MP
LDLIBS_ALL = $(SAN) $(PKG_LIBS) -pthread -lm

LIB       = $(BUILD)/libidpd.a
TLIB      = $(BUILD)/libidpd-test.a
IDPD      = $(BUILD)/idpd

# Filled in by the module files.
LIB_SRCS          = src/app.c
UNIT_TESTS        =
INTEGRATION_TESTS =
FUZZ_TARGETS      =
BENCH_BINS        =
# MODULES="util policy" builds a subset, so work on one module is not held up
# by another that is half written.
MODULES ?= $(notdir $(patsubst %/,%,$(dir $(sort $(wildcard src/*/module.mk)))))
.DEFAULT_GOAL := all
include $(MODULES:%=src/%/module.mk)
include tests/module.mk

MAIN_SRC  = src/main.c
LIB_OBJS  = $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
TLIB_OBJS = $(LIB_SRCS:%.c=$(BUILD)/tobj/%.o)
UNIT_BINS = $(UNIT_TESTS:%=$(BUILD)/tests/unit/test_%)
INTEG_BINS = $(INTEGRATION_TESTS:%=$(BUILD)/tests/integration/test_%)
SUPPORT_OBJS = $(BUILD)/tobj/tests/support/harness.o $(BUILD)/tobj/tests/support/world.o

.PHONY: all deps test check sanitize run fuzz bench clean format tests-build
# Keep intermediate objects: they are reused by the next build.
.PRECIOUS: $(BUILD)/obj/%.o $(BUILD)/tobj/%.o
all: bin/idpd

bin/idpd: $(IDPD)
	@mkdir -p bin
	cp $(IDPD) $@

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/tobj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC [t]  $<"
	@$(CC) $(CFLAGS_ALL) -DIDP_TESTING -Itests/support $(TEST_CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJS)
	@rm -f $@
	@ar rcs $@ $^

$(TLIB): $(TLIB_OBJS)
	@rm -f $@
	@ar rcs $@ $^

$(IDPD): $(BUILD)/obj/$(MAIN_SRC:.c=.o) $(LIB)
	$(CC) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/tests/unit/test_%: $(BUILD)/tobj/tests/unit/test_%.o $(TLIB)
	@mkdir -p $(dir $@)
	$(CC) -o $@ $^ $(TEST_LIBS) $(LDLIBS_ALL)

$(BUILD)/tests/integration/test_%: $(BUILD)/tobj/tests/integration/test_%.o $(SUPPORT_OBJS) $(TLIB)
	@mkdir -p $(dir $@)
	$(CC) -o $@ $^ $(TEST_LIBS) $(LDLIBS_ALL)

tests-build: $(IDPD) $(UNIT_BINS) $(INTEG_BINS)

deps:
	@tests/support/deps.sh

# The README's test command: install what is missing, then build and run.
test: deps
	@$(MAKE) --no-print-directory check

check: tests-build
	@BUILD=$(BUILD) IDPD_BIN=$(abspath $(IDPD)) tests/support/run-tests.sh \
		$(UNIT_BINS) -- $(INTEG_BINS)

# One test runs idpd under libfaketime, which cannot share a process with
# ASan: it gets the plain build's binary (IDPD_PLAIN_BIN).
sanitize: deps
	@$(MAKE) --no-print-directory build/idpd BUILD=build
	@IDPD_PLAIN_BIN=$(abspath build/idpd) $(MAKE) --no-print-directory check BUILD=build-san \
		CC=clang OPT="-O1 -g" \
		SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"

run: deps
	@$(MAKE) --no-print-directory bin/idpd
	@tests/support/run.sh

FUZZ_SECONDS ?= 60
fuzz: deps
	@$(MAKE) --no-print-directory BUILD=build-fuzz CC=clang OPT="-O1 -g" \
		SAN="-fsanitize=address,undefined,fuzzer-no-link -fno-omit-frame-pointer" DEFS=-DIDP_FUZZING \
		$(FUZZ_TARGETS:%=build-fuzz/tests/fuzz/fuzz_%)
	@tests/support/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

$(BUILD)/tests/fuzz/fuzz_%: $(BUILD)/tobj/tests/fuzz/fuzz_%.o $(TLIB)
	@mkdir -p $(dir $@)
	$(CC) -fsanitize=fuzzer -o $@ $^ $(LDLIBS_ALL)

# Benchmark programs (tests/bench/*.c, listed in BENCH_BINS) link the
# production build of the library.
$(BUILD)/tests/bench/%: $(BUILD)/obj/tests/bench/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) -o $@ $^ $(LDLIBS_ALL)

bench: deps
	@$(MAKE) --no-print-directory bin/idpd $(BENCH_BINS)
	@tests/bench/run.sh

format:
	clang-format -i $(shell git ls-files '*.c' '*.h')

clean:
	rm -rf build build-san build-fuzz bin

# Every object's header dependencies, main and tests included.
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
