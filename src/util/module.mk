LIB_SRCS += src/util/common.c src/util/buf.c src/util/log.c src/util/clock.c src/util/arena.c src/util/json_out.c src/util/tls_client.c
UNIT_TESTS += util json_out
