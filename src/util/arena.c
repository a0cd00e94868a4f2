/*
 * arena.c - bump allocation over a list of malloc'd chunks (see arena.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/arena.h"

struct idp_arena_chunk {
	struct idp_arena_chunk *next;
	size_t size, used;
	_Alignas(16) char data[];
};

#define ALIGN 16
#define CHUNK_MIN 8192

void
idp_arena_init(struct idp_arena *a, size_t max)
{
	a->head = NULL;
	a->total = 0;
	a->max = max;
	a->first_used = 0;
}

/*
 * What was handed out is wiped before it goes back: a request's arena holds
 * the form values it decoded, subject and actor tokens among them, and the
 * inline first block is freed later with the request, unwiped otherwise.
 * Only used bytes are wiped, a few KiB for a request.
 */
void
idp_arena_cleanup(struct idp_arena *a)
{
	struct idp_arena_chunk *c = a->head, *next;

	while (c != NULL) {
		next = c->next;
		idp_wipe(c->data, c->used);
		free(c);
		c = next;
	}
	idp_wipe(a->first, a->first_used);
	a->head = NULL;
	a->total = 0;
	a->first_used = 0;
}

void *
idp_arena_alloc(struct idp_arena *a, size_t n)
{
	struct idp_arena_chunk *c;
	size_t rounded, size;

	if (n > SIZE_MAX / 2)
		return NULL;
	rounded = (n + ALIGN - 1) & ~(size_t)(ALIGN - 1);
	if (rounded == 0)
		rounded = ALIGN;
	if (a->max != 0 && a->total + rounded > a->max)
		return NULL;
	a->total += rounded;

	/* first[] is aligned only to the struct; round its offset explicitly. */
	{
		uintptr_t base = (uintptr_t)a->first;
		size_t off =
		    (size_t)(((base + a->first_used + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1)) - base);

		if (off + rounded <= sizeof(a->first)) {
			a->first_used = off + rounded;
			return a->first + off;
		}
	}
	c = a->head;
	if (c == NULL || c->size - c->used < rounded) {
		size = rounded > CHUNK_MIN ? rounded : CHUNK_MIN;
		c = idp_xmalloc(sizeof(*c) + size);
		c->size = size;
		c->used = 0;
		c->next = a->head;
		a->head = c;
	}
	c->used += rounded;
	return c->data + c->used - rounded;
}

char *
idp_arena_strndup(struct idp_arena *a, const char *s, size_t n)
{
	char *p = idp_arena_alloc(a, n + 1);

	if (p == NULL)
		return NULL;
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

char *
idp_arena_strdup(struct idp_arena *a, const char *s)
{
	return idp_arena_strndup(a, s, strlen(s));
}

char *
idp_arena_printf(struct idp_arena *a, const char *fmt, ...)
{
	va_list ap;
	char *p;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return NULL;
	p = idp_arena_alloc(a, (size_t)n + 1);
	if (p == NULL)
		return NULL;
	va_start(ap, fmt);
	vsnprintf(p, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return p;
}
