/*
 * router.c - path patterns with {param} segments, matched segment by segment.
 *
 * The route table is small (tens of routes) and built once at start-up, so a
 * linear scan is both simple and fast; it is immutable while serving, so
 * workers read it without a lock.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/http.h"

#define MAX_SEGS 12

struct route {
	char *pattern;
	unsigned methods;
	size_t n_segs;
	struct {
		char *text;  /* literal text, or the parameter name */
		bool param;
	} segs[MAX_SEGS];
	http_handler handler;
	void *ctx;
	unsigned flags;
};

struct http_router {
	struct route routes[HTTP_MAX_ROUTES];
	size_t n;
};

static const struct {
	unsigned m;
	const char *name;
} methods[] = {
	{HTTP_GET, "GET"},     {HTTP_HEAD, "HEAD"},     {HTTP_POST, "POST"},
	{HTTP_PUT, "PUT"},     {HTTP_PATCH, "PATCH"},   {HTTP_DELETE, "DELETE"},
	{HTTP_OPTIONS, "OPTIONS"},
};

unsigned
http_method_parse(const char *s)
{
	for (size_t i = 0; i < IDP_ARRAY_LEN(methods); i++)
		if (strcmp(s, methods[i].name) == 0)
			return methods[i].m;
	return 0;
}

const char *
http_method_name(unsigned m)
{
	for (size_t i = 0; i < IDP_ARRAY_LEN(methods); i++)
		if (methods[i].m == m)
			return methods[i].name;
	return "?";
}

void
http_allow_format(unsigned mask, char *out, size_t len)
{
	size_t used = 0;

	if (len == 0)
		return;
	out[0] = '\0';
	for (size_t i = 0; i < IDP_ARRAY_LEN(methods); i++) {
		size_t n;

		if (!(mask & methods[i].m))
			continue;
		n = strlen(methods[i].name) + (used ? 2 : 0);
		if (used + n + 1 > len)
			break;
		if (used) {
			memcpy(out + used, ", ", 2);
			used += 2;
		}
		memcpy(out + used, methods[i].name, strlen(methods[i].name));
		used += strlen(methods[i].name);
		out[used] = '\0';
	}
}

struct http_router *
http_router_new(void)
{
	return idp_xcalloc(1, sizeof(struct http_router));
}

void
http_router_free(struct http_router *r)
{
	if (r == NULL)
		return;
	for (size_t i = 0; i < r->n; i++) {
		free(r->routes[i].pattern);
		for (size_t j = 0; j < r->routes[i].n_segs; j++)
			free(r->routes[i].segs[j].text);
	}
	free(r);
}

static bool
literal_ok(const char *s, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (!isalnum(c) && c != '-' && c != '_' && c != '.')
			return false;
	}
	return true;
}

static int
compile(struct route *rt, const char *pattern)
{
	const char *p = pattern;

	if (*p != '/')
		return IDP_EINVAL;
	rt->n_segs = 0;
	if (strcmp(pattern, "/") == 0)
		return IDP_OK;
	while (*p == '/') {
		const char *start = ++p, *end;
		size_t n;

		end = strchr(start, '/');
		n = end ? (size_t)(end - start) : strlen(start);
		if (rt->n_segs == MAX_SEGS)
			return IDP_EINVAL;
		if (n >= 3 && start[0] == '{' && start[n - 1] == '}') {
			if (!literal_ok(start + 1, n - 2))
				return IDP_EINVAL;
			rt->segs[rt->n_segs].param = true;
			rt->segs[rt->n_segs].text = idp_xstrndup(start + 1, n - 2);
		} else {
			if (!literal_ok(start, n))
				return IDP_EINVAL;
			rt->segs[rt->n_segs].param = false;
			rt->segs[rt->n_segs].text = idp_xstrndup(start, n);
		}
		rt->n_segs++;
		p = start + n;
	}
	return *p == '\0' ? IDP_OK : IDP_EINVAL;
}

int
http_router_add(struct http_router *r, unsigned methods_mask, const char *pattern,
		http_handler h, void *ctx)
{
	return http_router_add_ex(r, methods_mask, pattern, h, ctx, 0);
}

int
http_router_add_ex(struct http_router *r, unsigned methods_mask, const char *pattern,
		   http_handler h, void *ctx, unsigned flags)
{
	struct route *rt;

	if (r->n == HTTP_MAX_ROUTES)
		return IDP_ETOOBIG;
	if (methods_mask == 0 || h == NULL)
		return IDP_EINVAL;
	if (methods_mask & HTTP_GET)
		methods_mask |= HTTP_HEAD;
	for (size_t i = 0; i < r->n; i++)
		if (strcmp(r->routes[i].pattern, pattern) == 0 &&
		    (r->routes[i].methods & methods_mask))
			return IDP_EINVAL;
	rt = &r->routes[r->n];
	memset(rt, 0, sizeof(*rt));
	if (compile(rt, pattern) != IDP_OK) {
		for (size_t j = 0; j < rt->n_segs; j++)
			free(rt->segs[j].text);
		memset(rt, 0, sizeof(*rt));
		return IDP_EINVAL;
	}
	rt->pattern = idp_xstrdup(pattern);
	rt->methods = methods_mask;
	rt->handler = h;
	rt->ctx = ctx;
	rt->flags = flags;
	r->n++;
	return IDP_OK;
}

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/*
 * Split path into segments, percent-decoding each into scratch.  Returns the
 * number of segments, or -1 for a path that cannot name a resource.
 */
static int
split(const char *path, char *scratch, size_t scratch_len, const char *segs[MAX_SEGS])
{
	size_t used = 0;
	int n = 0;
	const char *p = path;

	if (p[0] != '/')
		return -1;
	if (p[1] == '\0')
		return 0;
	while (*p == '/') {
		const char *start = ++p;
		char *out = scratch + used;
		size_t len = 0;

		if (n == MAX_SEGS)
			return -1;
		while (*p != '\0' && *p != '/') {
			int c = (unsigned char)*p;

			if (c == '%') {
				int hi = hexval((unsigned char)p[1]), lo;

				if (hi < 0)
					return -1;
				lo = hexval((unsigned char)p[2]);
				if (lo < 0)
					return -1;
				c = hi * 16 + lo;
				if (c == 0 || c == '/')
					return -1;
				p += 3;
			} else {
				p++;
			}
			if (used + len + 1 >= scratch_len)
				return -1;
			out[len++] = (char)c;
		}
		if (p == start)
			return -1; /* empty segment: "//" or a trailing "/" */
		out[len] = '\0';
		if (strcmp(out, ".") == 0 || strcmp(out, "..") == 0)
			return -1;
		segs[n++] = out;
		used += len + 1;
	}
	return *p == '\0' ? n : -1;
}

void
http_router_match(const struct http_router *r, unsigned method, const char *path, char *scratch,
		  size_t scratch_len, struct http_match *m)
{
	const char *segs[MAX_SEGS];
	int n = split(path, scratch, scratch_len, segs);

	m->route = -1;
	m->status = 404;
	m->allow = 0;
	m->n_params = 0;
	if (n < 0)
		return;
	/* The route with the most literal segments wins, so "/v1/agents/search"
	 * beats "/v1/agents/{id}" whatever order they were added in. */
	int best = -1;
	size_t best_lit = 0;

	for (size_t i = 0; i < r->n; i++) {
		const struct route *rt = &r->routes[i];
		size_t np = 0, lit = 0;
		bool ok = rt->n_segs == (size_t)n;

		for (size_t j = 0; ok && j < rt->n_segs; j++) {
			if (rt->segs[j].param) {
				if (++np > HTTP_MAX_PARAMS)
					ok = false;
			} else if (strcmp(rt->segs[j].text, segs[j]) != 0) {
				ok = false;
			} else {
				lit++;
			}
		}
		if (!ok)
			continue;
		if (!(rt->methods & method)) {
			m->allow |= rt->methods;
			continue;
		}
		if (best < 0 || lit > best_lit) {
			best = (int)i;
			best_lit = lit;
		}
	}
	if (best >= 0) {
		const struct route *rt = &r->routes[best];

		m->route = best;
		m->status = 0;
		m->allow = 0;
		for (size_t j = 0; j < rt->n_segs; j++) {
			if (!rt->segs[j].param)
				continue;
			m->params[m->n_params].name = rt->segs[j].text;
			m->params[m->n_params].value = segs[j];
			m->n_params++;
		}
		return;
	}
	if (m->allow != 0)
		m->status = 405;
}

const char *
http_router_pattern(const struct http_router *r, int route)
{
	if (route < 0 || (size_t)route >= r->n)
		return "unmatched";
	return r->routes[route].pattern;
}

size_t
http_router_count(const struct http_router *r)
{
	return r->n;
}

http_handler
http_router_handler(const struct http_router *r, int route, void **ctx)
{
	*ctx = r->routes[route].ctx;
	return r->routes[route].handler;
}

unsigned
http_router_flags(const struct http_router *r, int route)
{
	return r->routes[route].flags;
}
