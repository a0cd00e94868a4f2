LIB_SRCS += src/config/toml.c src/config/config.c
UNIT_TESTS += toml config reload
FUZZ_TARGETS += toml
