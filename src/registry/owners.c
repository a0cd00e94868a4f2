/*
 * owners.c - the list of owners who have left (registry.departed_owners).
 *
 * An HR feed writes the file; idpd reads it when it needs it (each cleanup
 * run, each registration or owner change) and keeps the parsed set until the
 * file changes, so a registration does not re-read an unchanged file.  A
 * change is any of device, inode, size, modification or change time: a feed
 * that replaces the file with mv, or keeps the old mtime (cp -p, rsync -t),
 * still moves the inode or the change time, which no one can set back.  The cached set sits behind
 * owners_lock and is copied out, so callers never share it.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "idpd/buf.h"
#include "registry_int.h"

#define OWNERS_FILE_MAX (16u << 20)
#define OWNERS_MAX 1000000

struct owner_set {
	char **v; /* sorted, unique, normalised */
	size_t n;
};

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

struct owner_set *
owner_set_parse(const char *text, size_t len, struct idp_diag *diag)
{
	struct owner_set *s = idp_xcalloc(1, sizeof(*s));
	size_t cap = 0, line = 0, errors = 0;
	const char *p = text, *end = text + len;

	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p)), *b = p, *e;
		char owner[330], norm[330];
		const char *why = NULL;

		e = eol != NULL ? eol : end;
		p = eol != NULL ? eol + 1 : end;
		line++;
		while (b < e && (*b == ' ' || *b == '\t'))
			b++;
		while (e > b && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
			e--;
		if (b == e || *b == '#')
			continue;
		if ((size_t)(e - b) >= sizeof(owner) || memchr(b, '\0', (size_t)(e - b)) != NULL) {
			why = "is not an owner";
		} else {
			memcpy(owner, b, (size_t)(e - b));
			owner[e - b] = '\0';
			(void)registry_owner_valid(owner, &why);
		}
		if (why != NULL) {
			if (diag != NULL)
				idp_diag_add(diag, "line %zu: %s", line, why);
			errors++;
			continue;
		}
		if (s->n == OWNERS_MAX) {
			if (diag != NULL)
				idp_diag_add(diag, "more than %d owners", OWNERS_MAX);
			errors++;
			break;
		}
		registry_owner_normalize(owner, norm, sizeof(norm));
		if (s->n == cap) {
			cap = cap ? cap * 2 : 64;
			s->v = idp_xrealloc(s->v, cap * sizeof(*s->v));
		}
		s->v[s->n++] = idp_xstrdup(norm);
	}
	if (errors > 0) {
		owner_set_free(s);
		return NULL;
	}
	qsort(s->v, s->n, sizeof(*s->v), cmp_str);
	/* drop repeats */
	{
		size_t w = 0;

		for (size_t r = 0; r < s->n; r++) {
			if (w > 0 && strcmp(s->v[w - 1], s->v[r]) == 0) {
				free(s->v[r]);
				continue;
			}
			s->v[w++] = s->v[r];
		}
		s->n = w;
	}
	return s;
}

void
owner_set_free(struct owner_set *s)
{
	if (s == NULL)
		return;
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
	free(s);
}

bool
owner_set_contains(const struct owner_set *s, const char *owner)
{
	char norm[330];
	const char *key = norm;

	if (s == NULL || s->n == 0)
		return false;
	registry_owner_normalize(owner, norm, sizeof(norm));
	return bsearch(&key, s->v, s->n, sizeof(*s->v), cmp_str) != NULL;
}

size_t
owner_set_count(const struct owner_set *s)
{
	return s != NULL ? s->n : 0;
}

char *
owner_set_pg_array(const struct owner_set *s)
{
	struct idp_buf b;
	int rc;

	idp_buf_init(&b, 0);
	rc = idp_buf_putc(&b, '{');
	for (size_t i = 0; s != NULL && i < s->n; i++) {
		rc |= idp_buf_puts(&b, i > 0 ? ",\"" : "\"");
		for (const char *c = s->v[i]; *c != '\0'; c++) {
			if (*c == '"' || *c == '\\')
				rc |= idp_buf_putc(&b, '\\');
			rc |= idp_buf_putc(&b, *c);
		}
		rc |= idp_buf_putc(&b, '"');
	}
	rc |= idp_buf_putc(&b, '}');
	if (rc != 0)
		abort(); /* an uncapped buffer only fails on OOM, which aborts first */
	return idp_buf_take(&b, NULL);
}

static struct owner_set *
owner_set_copy(const struct owner_set *s)
{
	struct owner_set *c = idp_xcalloc(1, sizeof(*c));

	c->n = s->n;
	c->v = idp_xcalloc(s->n ? s->n : 1, sizeof(*c->v));
	for (size_t i = 0; i < s->n; i++)
		c->v[i] = idp_xstrdup(s->v[i]);
	return c;
}

/* ---- the file, cached by (path, device, inode, size, mtime, ctime) ---- */

static pthread_mutex_t owners_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	char path[4096];
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime, ctime;
	struct owner_set *set;
} cached;

static bool
same_time(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

static int
read_file(const char *path, char **out, size_t *len, struct idp_diag *diag)
{
	struct idp_buf b;
	char chunk[8192], err[128];
	int fd = open(path, O_RDONLY | O_CLOEXEC), rc = IDP_OK;

	if (fd < 0) {
		idp_diag_add(diag, "registry.departed_owners: %s: cannot open: %s", path,
		             idp_strerror(errno, err, sizeof(err)));
		return IDP_EIO;
	}
	idp_buf_init(&b, OWNERS_FILE_MAX);
	for (;;) {
		ssize_t n = read(fd, chunk, sizeof(chunk));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			idp_diag_add(diag, "registry.departed_owners: %s: read: %s", path,
			             idp_strerror(errno, err, sizeof(err)));
			rc = IDP_EIO;
			break;
		}
		if (n == 0)
			break;
		if (idp_buf_append(&b, chunk, (size_t)n) != IDP_OK) {
			idp_diag_add(diag, "registry.departed_owners: %s: larger than %u bytes",
			             path, OWNERS_FILE_MAX);
			rc = IDP_ETOOBIG;
			break;
		}
	}
	close(fd);
	if (rc != IDP_OK) {
		idp_buf_cleanup(&b);
		return rc;
	}
	*out = idp_buf_take(&b, len);
	if (*out == NULL)
		*out = idp_xstrdup("");
	return IDP_OK;
}

int
departed_owners_load(const char *path, struct owner_set **out, struct idp_diag *diag)
{
	struct stat st;
	struct owner_set *set;
	struct idp_diag pd;
	char *text = NULL, err[128];
	size_t len = 0;
	int rc;

	*out = NULL;
	if (path == NULL || path[0] == '\0') {
		*out = idp_xcalloc(1, sizeof(**out));
		return IDP_OK;
	}
	if (stat(path, &st) != 0) {
		idp_diag_add(diag, "registry.departed_owners: %s: %s", path,
		             idp_strerror(errno, err, sizeof(err)));
		return IDP_EIO;
	}
	pthread_mutex_lock(&owners_lock);
	if (cached.set != NULL && strcmp(cached.path, path) == 0 && cached.dev == st.st_dev &&
	    cached.ino == st.st_ino && cached.size == st.st_size &&
	    same_time(&cached.mtime, &st.st_mtim) && same_time(&cached.ctime, &st.st_ctim)) {
		*out = owner_set_copy(cached.set);
		pthread_mutex_unlock(&owners_lock);
		return IDP_OK;
	}
	pthread_mutex_unlock(&owners_lock);

	rc = read_file(path, &text, &len, diag);
	if (rc != IDP_OK)
		return rc;
	idp_diag_init(&pd);
	set = owner_set_parse(text, len, &pd);
	free(text);
	if (set == NULL) {
		idp_diag_add(diag, "registry.departed_owners: %s: %s", path, idp_diag_str(&pd));
		return IDP_EINVAL;
	}
	pthread_mutex_lock(&owners_lock);
	owner_set_free(cached.set);
	cached.set = owner_set_copy(set);
	snprintf(cached.path, sizeof(cached.path), "%s", path);
	cached.dev = st.st_dev;
	cached.ino = st.st_ino;
	cached.size = st.st_size;
	cached.mtime = st.st_mtim;
	cached.ctime = st.st_ctim;
	pthread_mutex_unlock(&owners_lock);
	*out = set;
	return IDP_OK;
}
