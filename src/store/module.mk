LIB_SRCS += src/store/pool.c src/store/migrate.c src/store/listen.c
