LIB_SRCS += src/token/b64.c src/token/jws.c src/token/jws_cache.c src/token/kek.c
# Signing keys: the manager and its rules, its SQL, and its endpoints, job and CLI.
LIB_SRCS += src/token/keys.c src/token/keys_db.c src/token/keys_api.c
UNIT_TESTS += b64 jws kek keys
FUZZ_TARGETS += jws
BENCH_BINS += $(BUILD)/tests/bench/jws_bench

# The benchmark links the optimized library, not the test build.  The
# library is named by path: $(LIB) is not yet defined when this file is read.
$(BUILD)/tests/bench/jws_bench: $(BUILD)/obj/tests/bench/jws_bench.o $(BUILD)/libidpd.a
	@mkdir -p $(dir $@)
	$(CC) -o $@ $^ $(LDLIBS_ALL)
# Tasks: human identity ([[idp]]), tasks and their delegation tokens.
LIB_SRCS += src/token/human_auth.c src/token/jwks_remote.c src/token/tasks.c
UNIT_TESTS += tasks jwks_remote
# Delegation: POST /v1/delegations.
LIB_SRCS += src/token/delegation.c
# Revocation: the in-memory state, POST /introspect and POST /revoke.
LIB_SRCS += src/token/revocation.c src/token/introspect.c src/token/revoke.c
UNIT_TESTS += revocation
BENCH_BINS += $(BUILD)/tests/bench/introspect_helper
# Approvals: the rows, their binding and use; the /v1/approvals endpoints.
LIB_SRCS += src/token/approvals.c src/token/approvals_api.c
UNIT_TESTS += approvals
# Access tokens: POST /v1/token.
LIB_SRCS += src/token/access.c src/token/oauth.c src/token/caller.c
