# The policy engine: scope patterns (shared with the registry), the policy
# language pipeline (lexer -> parser -> checker -> compiler -> evaluator),
# context providers and the `idpd policy` tooling.
LIB_SRCS += src/policy/scope.c src/policy/source.c src/policy/lexer.c src/policy/parser.c \
	src/policy/check.c src/policy/compile.c src/policy/eval.c src/policy/input.c \
	src/policy/context.c src/policy/cli.c src/policy/http.c
UNIT_TESTS += scope policy policy_context
FUZZ_TARGETS += policy

# The evaluation microbenchmark: a standalone program on the library.  The
# library is named in full: $(LIB) is not defined yet when this file is read.
BENCH_BINS += $(BUILD)/tests/bench/policy_bench

$(BUILD)/tests/bench/policy_bench: $(BUILD)/obj/tests/bench/policy_bench.o $(BUILD)/libidpd.a
	@mkdir -p $(dir $@)
	$(CC) -o $@ $^ $(LDLIBS_ALL)
