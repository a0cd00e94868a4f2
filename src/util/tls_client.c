/*
 * tls_client.c - the shared pieces of idpd's outbound TLS clients; see
 * tls_client.h.  Moved here from the audit sinks, which were the first
 * client, so that the fetch of key sets (jwks_remote.c) connects and
 * verifies exactly as they do.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "idpd/clock.h"
#include "idpd/tls_client.h"

/* ---- names and addresses ---- */

bool
tls_client_split_address(const char *addr, char **host, char **port)
{
	const char *colon, *h = addr;
	size_t hlen;
	char *end;
	long p;

	if (addr[0] == '[') {
		const char *close = strchr(addr, ']');

		if (close == NULL || close[1] != ':')
			return false;
		h = addr + 1;
		hlen = (size_t)(close - h);
		colon = close + 1;
	} else {
		colon = strrchr(addr, ':');
		if (colon == NULL || strchr(addr, ':') != colon)
			return false;
		hlen = (size_t)(colon - addr);
	}
	if (hlen == 0 || hlen > 253)
		return false;
	errno = 0;
	p = strtol(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end != '\0' || errno != 0 || p < 1 || p > 65535)
		return false;
	*host = idp_xstrndup(h, hlen);
	*port = idp_xstrdup(colon + 1);
	return true;
}

bool
tls_client_split_url(const char *url, bool *tls, char **host, char **port, char **authority,
                     char **target)
{
	const char *rest, *slash, *defport;
	char *addr;
	size_t alen;
	bool ok;

	if (strncmp(url, "http://", 7) == 0) {
		*tls = false;
		rest = url + 7;
		defport = "80";
	} else if (strncmp(url, "https://", 8) == 0) {
		*tls = true;
		rest = url + 8;
		defport = "443";
	} else {
		return false;
	}
	slash = strchr(rest, '/');
	alen = slash != NULL ? (size_t)(slash - rest) : strlen(rest);
	if (alen == 0 || memchr(rest, '@', alen) != NULL || memchr(rest, '?', alen) != NULL)
		return false;
	/* It becomes the Host header: nothing that could end the line or the field. */
	for (size_t i = 0; i < alen; i++)
		if (rest[i] <= 0x20 || rest[i] >= 0x7f)
			return false;
	for (const char *t = slash; t != NULL && *t != '\0'; t++)
		if (*t <= 0x20 || *t >= 0x7f || *t == '#')
			return false;
	/* Without a port (after the bracket of an IPv6 literal), the scheme's. */
	if (rest[alen - 1] == ']' || (rest[0] != '[' && memchr(rest, ':', alen) == NULL))
		addr = idp_xasprintf("%.*s:%s", (int)alen, rest, defport);
	else
		addr = idp_xstrndup(rest, alen);
	ok = tls_client_split_address(addr, host, port);
	free(addr);
	if (!ok)
		return false;
	*authority = idp_xstrndup(rest, alen);
	*target = idp_xstrdup(slash != NULL ? slash : "/");
	return true;
}

bool
tls_client_is_ip_literal(const char *name)
{
	unsigned char a[16];

	return inet_pton(AF_INET, name, a) == 1 || inet_pton(AF_INET6, name, a) == 1;
}

/*
 * At most 253 bytes of labels joined by single dots, each label 1-63
 * letters, digits, '-' or '_', neither starting nor ending with '-'.  No
 * trailing dot: OpenSSL compares the name as written, and certificates
 * hold none.  '_' is no hostname character, but resolvers take it (a host
 * such as "siem_rx" in an address) and OpenSSL matches it exactly against
 * a certificate's name; only a wildcard does not cover a label holding it.
 */
bool
tls_client_is_dns_name(const char *name)
{
	size_t n = strlen(name), label = 0;

	if (n == 0 || n > 253)
		return false;
	for (size_t i = 0; i <= n; i++) {
		char c = name[i];

		if (c == '.' || c == '\0') {
			if (label == 0 || name[i - 1] == '-')
				return false;
			label = 0;
		} else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		           (c >= '0' && c <= '9') || c == '_' || (c == '-' && label > 0)) {
			if (++label > 63)
				return false;
		} else {
			return false;
		}
	}
	return true;
}

/* ---- TLS settings ---- */

const char *
tls_client_reason(char *buf, size_t len)
{
	unsigned long e = ERR_peek_error();
	const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;

	if (r != NULL)
		snprintf(buf, len, "%s", r);
	else if (e != 0)
		ERR_error_string_n(e, buf, len);
	else
		snprintf(buf, len, "no reason given");
	ERR_clear_error();
	return buf;
}

SSL_CTX *
tls_client_ctx_new(const char *ca_file, const char *what, struct idp_diag *diag)
{
	const char *ca = ca_file != NULL && ca_file[0] != '\0' ? ca_file : NULL;
	char why[256];
	SSL_CTX *ctx;

	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL || SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
		idp_diag_add(diag, "%s: cannot make a TLS context: %s", what,
		             tls_client_reason(why, sizeof(why)));
		SSL_CTX_free(ctx);
		return NULL;
	}
	/* Verification is always on; the name is set on each connection. */
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_default_passwd_cb(ctx, idp_pem_no_passphrase);
	if (ca != NULL && SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
		idp_diag_add(diag, "%s: ca_file %.256s holds no usable PEM certificate: %s", what,
		             ca, tls_client_reason(why, sizeof(why)));
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (ca == NULL && SSL_CTX_set_default_verify_paths(ctx) != 1) {
		idp_diag_add(diag, "%s: OpenSSL's default CA certificates cannot be loaded: %s",
		             what, tls_client_reason(why, sizeof(why)));
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

/* ---- connections ---- */

int
tls_client_ms_left(int64_t deadline)
{
	int64_t left = (deadline - idp_mono_us() + 999) / 1000;

	return left <= 0 ? 0 : left > 60000 ? 60000 : (int)left;
}

int
tls_client_wait_fd(int fd, short events, int64_t deadline, int stop_fd)
{
	for (;;) {
		struct pollfd p[2] = {{fd, events, 0}, {stop_fd, POLLIN, 0}};
		int left = tls_client_ms_left(deadline), n;

		if (left == 0)
			return ETIMEDOUT;
		n = poll(p, stop_fd >= 0 ? 2 : 1, left);
		if (n > 0 && stop_fd >= 0 && (p[1].revents & POLLIN))
			return ECANCELED;
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return errno;
	}
}

static int
connect_one(const struct addrinfo *ai, int64_t deadline, int stop_fd, int *err)
{
	int fd =
	    socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
	socklen_t len = sizeof(*err);

	if (fd < 0) {
		*err = errno;
		return -1;
	}
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
		return fd;
	*err = errno;
	if (*err == EINPROGRESS) {
		*err = tls_client_wait_fd(fd, POLLOUT, deadline, stop_fd);
		if (*err == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, err, &len) != 0)
			*err = errno;
		if (*err == 0)
			return fd;
	}
	close(fd);
	return -1;
}

void
tls_client_connect(const char *host, const char *port, bool udp, int64_t deadline, int stop_fd,
                   int *fd, int *err, int *gai)
{
	struct addrinfo hints, *res = NULL;

	*fd = -1;
	*err = ECONNREFUSED;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = udp ? SOCK_DGRAM : SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	*gai = getaddrinfo(host, port, &hints, &res);
	if (*gai != 0)
		return;
	for (struct addrinfo *ai = res; ai != NULL && *fd < 0; ai = ai->ai_next)
		*fd = connect_one(ai, deadline, stop_fd, err);
	freeaddrinfo(res);
}

/*
 * OpenSSL's own socket BIO writes with write(2), which raises SIGPIPE on a
 * closed peer.  This one passes MSG_NOSIGNAL, keeps the socket
 * non-blocking, and hands "would block" back to the caller.  The BIO's
 * data is the struct tls_client_sock.
 */
static BIO_METHOD *sock_bio_method; /* made once, kept for the process's life */
static pthread_once_t sock_bio_once = PTHREAD_ONCE_INIT;

static int
sock_bio_write(BIO *b, const char *p, size_t n, size_t *done)
{
	struct tls_client_sock *s = BIO_get_data(b);
	ssize_t w;

	BIO_clear_retry_flags(b);
	do {
		w = send(s->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
	} while (w < 0 && errno == EINTR);
	if (w >= 0) {
		*done = (size_t)w;
		return 1;
	}
	if (errno == EAGAIN || errno == EWOULDBLOCK)
		BIO_set_retry_write(b);
	else
		s->err = errno;
	return 0;
}

static int
sock_bio_read(BIO *b, char *p, size_t n, size_t *done)
{
	struct tls_client_sock *s = BIO_get_data(b);
	ssize_t r;

	BIO_clear_retry_flags(b);
	do {
		r = recv(s->fd, p, n, MSG_DONTWAIT);
	} while (r < 0 && errno == EINTR);
	if (r > 0) {
		*done = (size_t)r;
		return 1;
	}
	if (r == 0)
		s->eof = true;
	else if (errno == EAGAIN || errno == EWOULDBLOCK)
		BIO_set_retry_read(b);
	else
		s->err = errno;
	return 0;
}

static long
sock_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	struct tls_client_sock *s = BIO_get_data(b);

	(void)num;
	(void)ptr;
	if (cmd == BIO_CTRL_FLUSH) /* nothing is buffered here */
		return 1;
	if (cmd == BIO_CTRL_EOF)
		return s != NULL && s->eof;
	return 0;
}

static void
sock_bio_make(void)
{
	int type = BIO_get_new_index();
	BIO_METHOD *m = type > 0 ? BIO_meth_new(type | BIO_TYPE_SOURCE_SINK, "idpd socket") : NULL;

	if (m != NULL && (BIO_meth_set_write_ex(m, sock_bio_write) != 1 ||
	                  BIO_meth_set_read_ex(m, sock_bio_read) != 1 ||
	                  BIO_meth_set_ctrl(m, sock_bio_ctrl) != 1)) {
		BIO_meth_free(m);
		m = NULL;
	}
	sock_bio_method = m;
}

BIO *
tls_client_bio_new(struct tls_client_sock *s)
{
	BIO *bio;

	pthread_once(&sock_bio_once, sock_bio_make);
	if (sock_bio_method == NULL || (bio = BIO_new(sock_bio_method)) == NULL)
		return NULL;
	BIO_set_data(bio, s);
	BIO_set_init(bio, 1);
	return bio;
}

bool
tls_client_set_name(SSL *ssl, const char *name, bool is_ip)
{
	if (is_ip)
		return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1;
	SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	return SSL_set1_host(ssl, name) == 1 && SSL_set_tlsext_host_name(ssl, name) == 1;
}
