LIB_SRCS += src/http/router.c src/http/json.c src/http/problem.c src/http/server.c \
	src/http/metrics.c src/http/ops.c src/http/auth.c
UNIT_TESTS += router http_json auth
FUZZ_TARGETS += http_json
# Form bodies and OAuth error replies (the OAuth endpoints).
LIB_SRCS += src/http/form.c
UNIT_TESTS += form
FUZZ_TARGETS += form
