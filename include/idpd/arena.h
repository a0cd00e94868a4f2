/*
 * arena.h - request-scoped memory.
 *
 * An arena hands out memory that lives until idp_arena_cleanup(), so a
 * handler can build strings and small objects without freeing each one.
 * Each request owns one arena, released in the server's completion callback.
 * idp_arena_cleanup() wipes every byte it handed out (they may hold a
 * token a form carried) before giving the memory back.
 * Not thread-safe: one arena belongs to one request on one thread.
 */
#ifndef IDPD_ARENA_H
#define IDPD_ARENA_H

#include "idpd/common.h"

struct idp_arena_chunk;

struct idp_arena {
	struct idp_arena_chunk *head;
	size_t total;     /* bytes handed out, for the cap */
	size_t max;       /* 0 = unbounded */
	char first[1024]; /* first allocations come from here, no malloc */
	size_t first_used;
};

void idp_arena_init(struct idp_arena *a, size_t max);
void idp_arena_cleanup(struct idp_arena *a);

/* Aligned memory, or NULL when the arena's cap would be passed. */
void *idp_arena_alloc(struct idp_arena *a, size_t n);
char *idp_arena_strdup(struct idp_arena *a, const char *s);
char *idp_arena_strndup(struct idp_arena *a, const char *s, size_t n);
char *idp_arena_printf(struct idp_arena *a, const char *fmt, ...) IDP_PRINTF(2, 3);

#endif /* IDPD_ARENA_H */
