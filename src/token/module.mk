LIB_SRCS += src/token/b64.c src/token/jws.c src/token/kek.c
UNIT_TESTS += b64 jws kek
FUZZ_TARGETS += jws
BENCH_BINS += $(BUILD)/tests/bench/jws_bench

# The benchmark links the optimized library, not the test build.  The
# library is named by path: $(LIB) is not yet defined when this file is read.
$(BUILD)/tests/bench/jws_bench: $(BUILD)/obj/tests/bench/jws_bench.o $(BUILD)/libidpd.a
	@mkdir -p $(dir $@)
	$(CC) -o $@ $^ $(LDLIBS_ALL)
