/*
 * source.c - the pipeline's bump allocator and its error list: errors are
 * collected from every stage, sorted by position and rendered with the
 * source line and a "^^^" underline.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy_int.h"

struct ppool_chunk {
	struct ppool_chunk *next;
	size_t size, used;
	_Alignas(16) char data[];
};

#define PPOOL_CHUNK 16384

void *
ppool_alloc(struct ppool *p, size_t n)
{
	struct ppool_chunk *c = p->head;
	size_t need = (n + 15) & ~(size_t)15;
	void *out;

	if (need == 0)
		need = 16;
	if (c == NULL || c->size - c->used < need) {
		size_t size = need > PPOOL_CHUNK ? need : PPOOL_CHUNK;

		c = idp_xmalloc(sizeof(*c) + size);
		c->size = size;
		c->used = 0;
		/* A big block gets its own chunk behind the head, so the head keeps its room. */
		if (need > PPOOL_CHUNK && p->head != NULL) {
			c->next = p->head->next;
			p->head->next = c;
		} else {
			c->next = p->head;
			p->head = c;
		}
	}
	out = c->data + c->used;
	c->used += need;
	memset(out, 0, need);
	return out;
}

char *
ppool_strndup(struct ppool *p, const char *s, size_t n)
{
	char *d = ppool_alloc(p, n + 1);

	memcpy(d, s, n);
	d[n] = '\0';
	return d;
}

void
ppool_free(struct ppool *p)
{
	struct ppool_chunk *c = p->head, *next;

	while (c != NULL) {
		next = c->next;
		free(c);
		c = next;
	}
	p->head = NULL;
}

void
perr_add(struct perrors *e, const struct pfile *f, uint32_t line, uint32_t col, uint32_t len,
         const char *fmt, ...)
{
	struct perror_item *it;
	va_list ap;
	char *msg = NULL;

	if (e->n == e->cap) {
		e->cap = e->cap ? e->cap * 2 : 16;
		e->v = idp_xrealloc(e->v, e->cap * sizeof(*e->v));
	}
	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	va_end(ap);
	it = &e->v[e->n];
	it->file = f;
	it->line = line;
	it->col = col;
	it->len = len ? len : 1;
	it->msg = msg != NULL ? msg : idp_xstrdup("(out of memory)");
	it->seq = e->n;
	e->n++;
}

static int
perr_cmp(const void *pa, const void *pb)
{
	const struct perror_item *a = pa, *b = pb;

	if (a->file != b->file)
		return a->file < b->file ? -1 : 1;
	if (a->line != b->line)
		return a->line < b->line ? -1 : 1;
	if (a->col != b->col)
		return a->col < b->col ? -1 : 1;
	return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* The text of line (1-based) of f, without its newline. */
static const char *
find_line(const struct pfile *f, uint32_t line, size_t *len)
{
	const char *p = f->text, *end = f->text + f->len, *nl;

	for (uint32_t l = 1; l < line && p < end; l++) {
		nl = memchr(p, '\n', (size_t)(end - p));
		p = nl ? nl + 1 : end;
	}
	nl = memchr(p, '\n', (size_t)(end - p));
	*len = (size_t)((nl ? nl : end) - p);
	return p;
}

#define SHOW_MAX 160 /* bytes of a source line shown under an error */

/*
 * The error line, the source line and the underline.  A long line is shown
 * as a window of SHOW_MAX bytes around the column, marked with "...", so the
 * underline always points at the token.
 */
static void
render_one(const struct perror_item *it, struct idp_diag *diag)
{
	char src[SHOW_MAX + 8], mark[SHOW_MAX + 8];
	size_t n, start = 0, shown, m = 0, s = 0;
	const char *line = find_line(it->file, it->line, &n);
	size_t col0 = it->col > 0 ? it->col - 1 : 0;

	idp_diag_add(diag, "%s:%u:%u: %s", it->file->name, it->line, it->col, it->msg);
	if (col0 + 1 > SHOW_MAX - 16 && n > SHOW_MAX)
		start = col0 > SHOW_MAX / 2 ? col0 - SHOW_MAX / 2 : 0;
	shown = n - (start < n ? start : n);
	if (shown > SHOW_MAX)
		shown = SHOW_MAX;
	if (start > 0) {
		memcpy(src, "...", 3);
		memcpy(mark, "   ", 3);
		s = m = 3;
	}
	for (size_t i = 0; i < shown; i++) {
		unsigned char c = (unsigned char)line[start + i];

		/* Keep tabs so the underline lines up; hide other control bytes. */
		src[s++] = (c == '\t' || (c >= 0x20 && c != 0x7f)) ? (char)c : '?';
	}
	src[s] = '\0';
	idp_diag_add(diag, "%s", src);
	for (size_t i = start; i < col0 && m < SHOW_MAX + 3; i++)
		mark[m++] = (i < n && line[i] == '\t') ? '\t' : ' ';
	for (uint32_t i = 0; i < it->len && m < SHOW_MAX + 4; i++) {
		/* Underline within the line only (at least one mark). */
		if (i > 0 && col0 + i >= n)
			break;
		mark[m++] = '^';
	}
	mark[m] = '\0';
	idp_diag_add(diag, "%s", mark);
}

void
perr_render(struct perrors *e, struct idp_diag *diag)
{
	size_t shown;

	if (e->n == 0)
		return;
	qsort(e->v, e->n, sizeof(*e->v), perr_cmp);
	shown = e->n < POLICY_MAX_ERRORS ? e->n : POLICY_MAX_ERRORS;
	for (size_t i = 0; i < shown; i++)
		render_one(&e->v[i], diag);
	if (e->n > shown)
		idp_diag_add(diag, "... and %zu more errors", e->n - shown);
}

void
perr_free(struct perrors *e)
{
	for (size_t i = 0; i < e->n; i++)
		free(e->v[i].msg);
	free(e->v);
	e->v = NULL;
	e->n = e->cap = 0;
}
