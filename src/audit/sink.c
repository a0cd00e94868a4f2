/*
 * sink.c - the file, syslog and webhook transports of audit_sink.h.
 *
 * Sockets are non-blocking from creation; every wait is a poll(2) against a
 * deadline on the monotonic clock, so no call blocks longer than the
 * configured timeouts (name resolution excepted: getaddrinfo has no
 * timeout, so an address should be a literal or resolve from /etc/hosts).
 * Every send passes MSG_NOSIGNAL, so a closed peer is an error, not a
 * signal.  TLS (OpenSSL) runs over the same socket through a BIO of this
 * file's, so it keeps both rules: see "TLS" below.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <linux/sockios.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "idpd/audit_sink.h"
#include "idpd/clock.h"
#include "idpd/tls_client.h"

#include "audit_int.h"

#define APP_NAME "idpd"
#define HOSTNAME_MAX 255 /* RFC 5424 */
#define MSGID_MAX 32     /* RFC 5424 */
/* A webhook POST carries at most about this many bytes of events. */
#define WEBHOOK_BODY_MAX (4 * 1024 * 1024)
/*
 * How long a syslog receiver is given to refuse us after a TLS 1.3
 * handshake in which it asked for a client certificate, once before the
 * first line and once after the first flush (see tls_verdict).  A
 * receiver that sends no session ticket (syslog-ng sends none on purpose)
 * and takes us is waited for that long on every new connection, so it is
 * short, and apart from connect_timeout.
 */
#define TLS_VERDICT_MS 500

struct audit_sink {
	enum audit_sink_type type;
	enum audit_format format;
	enum audit_sink_proto protocol;
	char *path;
	char *host; /* syslog, webhook: the address split in two */
	char *port;
	char *target;        /* webhook: the request target ("/path") */
	char *authority;     /* webhook: the Host header, as the URL gave it */
	char *bearer;        /* webhook: the receiver's bearer token, or NULL */
	size_t pending;      /* webhook: events in body */
	struct idp_buf body; /* webhook: {"events":[ ... lines so far */
	char hostname[HOSTNAME_MAX + 1];
	char *version;
	int facility;
	int64_t connect_timeout_ms;
	int64_t send_timeout_ms;
	size_t udp_max;
	bool fsync;
	bool tls;         /* syslog over tls, or an https webhook */
	SSL_CTX *tls_ctx; /* every connection's TLS settings, made once by audit_sink_new */
	char *tls_name;   /* the name the receiver's certificate must hold */
	bool tls_name_ip; /* tls_name is an IP literal: checked as one, and no SNI */
	bool tls_cert;    /* a client certificate is set: sent when the receiver asks */

	int fd;                      /* -1 when closed */
	SSL *ssl;                    /* TLS over fd; NULL when closed or plain */
	bool tls_clean;              /* the TLS connection is sound: close sends close_notify */
	struct tls_client_sock sock; /* fd as TLS's BIO sees it: its end, its last errno */
	bool tls_cert_asked;         /* the receiver asked for a client certificate */
	bool tls_ticket;             /* the receiver sent a session ticket (TLS 1.3: it took us) */
	bool tls_unjudged;           /* it may still refuse us (TLS 1.3): the first flush waits */
	int stop_fd;                 /* readable: stop waiting in a flush; -1 for none */
	bool unflushed;              /* TCP: bytes sent on fd since the last good flush */
	struct idp_buf line;         /* write_event's formatted line */
	struct idp_buf frame;        /* file: line + LF; syslog: header + line */
	struct idp_buf wire;         /* TCP: length prefix + frame, sent with one send() */
	char desc[320];
};

static const char *const type_names[] = {"file", "syslog", "webhook"};
static const char *const proto_names[] = {"tcp", "udp", "tls"};

const char *
audit_sink_type_name(enum audit_sink_type t)
{
	return (unsigned)t < IDP_ARRAY_LEN(type_names) ? type_names[t] : NULL;
}

int
audit_sink_type_parse(const char *s, enum audit_sink_type *out)
{
	for (size_t i = 0; i < IDP_ARRAY_LEN(type_names); i++) {
		if (strcmp(s, type_names[i]) == 0) {
			*out = (enum audit_sink_type)i;
			return IDP_OK;
		}
	}
	return IDP_EINVAL;
}

const char *
audit_sink_proto_name(enum audit_sink_proto p)
{
	return (unsigned)p < IDP_ARRAY_LEN(proto_names) ? proto_names[p] : NULL;
}

int
audit_sink_proto_parse(const char *s, enum audit_sink_proto *out)
{
	for (size_t i = 0; i < IDP_ARRAY_LEN(proto_names); i++) {
		if (strcmp(s, proto_names[i]) == 0) {
			*out = (enum audit_sink_proto)i;
			return IDP_OK;
		}
	}
	return IDP_EINVAL;
}

bool
audit_sink_retryable(int err)
{
	return err == IDP_EUNAVAIL;
}

void
audit_sink_config_defaults(struct audit_sink_config *c)
{
	memset(c, 0, sizeof(*c));
	c->type = AUDIT_SINK_FILE;
	c->format = AUDIT_FORMAT_JSON;
	c->protocol = AUDIT_PROTO_TCP;
	c->version = "0";
	c->facility = 13;
	c->connect_timeout_ms = 5000;
	c->send_timeout_ms = 5000;
	c->udp_max = 2048;
	c->fsync = true;
}

/* Copy s into out keeping only printable ASCII without spaces, as RFC 5424 wants. */
static void
header_token(const char *s, char *out, size_t max)
{
	size_t n = 0;

	for (; s != NULL && *s != '\0' && n < max; s++)
		if (*s > 0x20 && *s < 0x7f)
			out[n++] = *s;
	if (n == 0)
		out[n++] = '-';
	out[n] = '\0';
}

/* ---- TLS settings --------------------------------------------------- */

/* NULL for NULL or "": an unset optional setting. */
static const char *
setting(const char *s)
{
	return s != NULL && s[0] != '\0' ? s : NULL;
}

/*
 * The receiver sent a session ticket.  Under TLS 1.3 that is its word that
 * it took our certificate (see tls_verdict).  The session is not kept:
 * every connection makes a full handshake and a full verification.
 */
static int
tls_on_ticket(SSL *ssl, SSL_SESSION *sess)
{
	struct audit_sink *s = SSL_get_app_data(ssl);

	(void)sess;
	if (s != NULL)
		s->tls_ticket = true;
	return 0;
}

/* Whether path can be opened for reading; if not, diag says why. */
static bool
file_readable(const char *key, const char *path, struct idp_diag *diag)
{
	char buf[128];
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd >= 0) {
		close(fd);
		return true;
	}
	idp_diag_add(diag, "audit sink: %s %.256s cannot be read: %s", key, path,
	             idp_strerror(errno, buf, sizeof(buf)));
	return false;
}

/*
 * s->tls_ctx and s->tls_name from cfg: what every connection of the sink
 * verifies and presents.  The files are read here, once, so that a sink
 * whose files are missing, unreadable or mismatched is refused when it is
 * configured (at start or in a reload's check), not when it first ships.
 * Messages name the setting and the file, never a key's content.
 */
static int
tls_setup(struct audit_sink *s, const struct audit_sink_config *cfg, struct idp_diag *diag)
{
	const char *ca = setting(cfg->ca_file), *cert = setting(cfg->cert_file);
	const char *key = setting(cfg->key_file), *name = setting(cfg->server_name);
	char why[256];
	SSL_CTX *ctx;

	if ((cert == NULL) != (key == NULL)) {
		idp_diag_add(diag, "audit sink: cert_file and key_file go together: set both for a "
		                   "client certificate, or neither");
		return IDP_EINVAL;
	}
	if (name == NULL)
		name = s->host;
	s->tls_name_ip = tls_client_is_ip_literal(name);
	if (!s->tls_name_ip && !tls_client_is_dns_name(name)) {
		/* Say which setting the name came from: the host of an address
		 * or url is fine for connecting, only not for the check. */
		if (setting(cfg->server_name) != NULL)
			idp_diag_add(
			    diag,
			    "audit sink: server_name \"%.64s\" is neither a DNS name nor an "
			    "IP address (" TLS_CLIENT_DNS_NAME_RULE ")",
			    name);
		else
			idp_diag_add(
			    diag,
			    "audit sink: the host \"%.64s\" of %s is neither a DNS name nor "
			    "an IP address, so the receiver's certificate cannot be checked "
			    "against it (" TLS_CLIENT_DNS_NAME_RULE
			    "); set server_name to the name the "
			    "certificate holds",
			    name, s->type == AUDIT_SINK_WEBHOOK ? "url" : "address");
		return IDP_EINVAL;
	}
	s->tls_name = idp_xstrdup(name);
	s->tls_cert = cert != NULL;
	if ((ca != NULL && !file_readable("ca_file", ca, diag)) ||
	    (cert != NULL && !file_readable("cert_file", cert, diag)) ||
	    (key != NULL && !file_readable("key_file", key, diag)))
		return IDP_EINVAL;

	ctx = s->tls_ctx = tls_client_ctx_new(ca, "audit sink", diag);
	if (ctx == NULL)
		return IDP_EINVAL;
	/* A send may be cut short and resumed, as with plain TCP. */
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	/* Told of tickets (tls_on_ticket), never storing them. */
	SSL_CTX_set_session_cache_mode(ctx,
	                               SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(ctx, tls_on_ticket);
	if (cert != NULL && SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		idp_diag_add(diag,
		             "audit sink: cert_file %.256s is not a PEM certificate chain: %s",
		             cert, tls_client_reason(why, sizeof(why)));
		return IDP_EINVAL;
	}
	if (key != NULL && (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
	                    SSL_CTX_check_private_key(ctx) != 1)) {
		idp_diag_add(diag,
		             "audit sink: key_file %.256s is not an unencrypted PEM key matching "
		             "cert_file: %s",
		             key, tls_client_reason(why, sizeof(why)));
		return IDP_EINVAL;
	}
	return IDP_OK;
}

int
audit_sink_new(const struct audit_sink_config *cfg, struct audit_sink **out, struct idp_diag *diag)
{
	struct audit_sink *s;
	char host[HOSTNAME_MAX + 1];

	*out = NULL;
	if (audit_format_name(cfg->format) == NULL) {
		idp_diag_add(diag, "audit sink: unknown format");
		return IDP_EINVAL;
	}
	if (cfg->connect_timeout_ms <= 0 || cfg->send_timeout_ms <= 0) {
		idp_diag_add(diag, "audit sink: timeouts must be positive");
		return IDP_EINVAL;
	}
	s = idp_xcalloc(1, sizeof(*s));
	s->fd = -1;
	s->stop_fd = -1;
	s->type = cfg->type;
	s->format = cfg->format;
	s->protocol = cfg->protocol;
	s->version = idp_xstrdup(cfg->version ? cfg->version : "0");
	s->facility = cfg->facility;
	s->connect_timeout_ms = cfg->connect_timeout_ms;
	s->send_timeout_ms = cfg->send_timeout_ms;
	s->udp_max = cfg->udp_max;
	s->fsync = cfg->fsync;
	idp_buf_init(&s->line, AUDIT_SINK_LINE_MAX);
	idp_buf_init(&s->frame, 0);
	idp_buf_init(&s->wire, 0);
	idp_buf_init(&s->body, 0);

	if (cfg->type == AUDIT_SINK_FILE) {
		if (cfg->path == NULL || cfg->path[0] == '\0') {
			idp_diag_add(diag, "audit sink: a file sink needs a path");
			goto fail;
		}
		if (cfg->protocol == AUDIT_PROTO_TLS) {
			idp_diag_add(diag,
			             "audit sink: protocol \"tls\" is for syslog sinks; a file "
			             "sink has no connection to protect");
			goto fail;
		}
		s->path = idp_xstrdup(cfg->path);
		snprintf(s->desc, sizeof(s->desc), "file %.256s (%s)", s->path,
		         audit_format_name(s->format));
	} else if (cfg->type == AUDIT_SINK_SYSLOG) {
		if (audit_sink_proto_name(cfg->protocol) == NULL) {
			idp_diag_add(diag, "audit sink: protocol must be tcp, tls or udp");
			goto fail;
		}
		s->tls = cfg->protocol == AUDIT_PROTO_TLS;
		if (cfg->address == NULL ||
		    !tls_client_split_address(cfg->address, &s->host, &s->port)) {
			idp_diag_add(diag, "audit sink: address must be host:port or [v6]:port");
			goto fail;
		}
		if (cfg->facility < 0 || cfg->facility > 23) {
			idp_diag_add(diag, "audit sink: facility must be 0-23");
			goto fail;
		}
		if (cfg->protocol == AUDIT_PROTO_UDP &&
		    (cfg->udp_max < AUDIT_SINK_UDP_MIN || cfg->udp_max > AUDIT_SINK_UDP_MAX)) {
			idp_diag_add(diag, "audit sink: udp_max must be %d-%d", AUDIT_SINK_UDP_MIN,
			             AUDIT_SINK_UDP_MAX);
			goto fail;
		}
		if (cfg->hostname != NULL) {
			header_token(cfg->hostname, s->hostname, HOSTNAME_MAX);
		} else {
			if (gethostname(host, sizeof(host)) != 0)
				host[0] = '\0';
			host[HOSTNAME_MAX] = '\0';
			header_token(host, s->hostname, HOSTNAME_MAX);
		}
		snprintf(s->desc, sizeof(s->desc), "syslog %s %.264s (%s)",
		         audit_sink_proto_name(s->protocol), cfg->address,
		         audit_format_name(s->format));
	} else if (cfg->type == AUDIT_SINK_WEBHOOK) {
		if (cfg->protocol == AUDIT_PROTO_TLS) {
			idp_diag_add(diag, "audit sink: a webhook takes TLS from an https:// url, "
			                   "not from protocol");
			goto fail;
		}
		if (cfg->url == NULL || !tls_client_split_url(cfg->url, &s->tls, &s->host, &s->port,
		                                              &s->authority, &s->target)) {
			idp_diag_add(diag, "audit sink: url must be http[s]://host[:port][/path]");
			goto fail;
		}
		if (cfg->format != AUDIT_FORMAT_JSON) {
			idp_diag_add(diag, "audit sink: a webhook carries the json format only");
			goto fail;
		}
		if (cfg->bearer != NULL) {
			for (const char *c = cfg->bearer; *c != '\0'; c++)
				if (*c <= 0x20 || *c >= 0x7f) {
					idp_diag_add(diag, "audit sink: the bearer token must be "
					                   "visible ASCII");
					goto fail;
				}
			s->bearer = idp_xstrdup(cfg->bearer);
		}
		s->protocol = AUDIT_PROTO_TCP;
		snprintf(s->desc, sizeof(s->desc), "webhook %s://%.200s%.100s",
		         s->tls ? "https" : "http", s->authority, s->target);
	} else {
		idp_diag_add(diag, "audit sink: type must be file, syslog or webhook");
		goto fail;
	}
	if (s->tls) {
		if (tls_setup(s, cfg, diag) != IDP_OK)
			goto fail;
	} else {
		/* Fail closed: someone who set a CA believes the sink is protected. */
		static const char *const keys[] = {"ca_file", "server_name", "cert_file",
		                                   "key_file"};
		const char *set[] = {cfg->ca_file, cfg->server_name, cfg->cert_file, cfg->key_file};

		for (size_t i = 0; i < IDP_ARRAY_LEN(keys); i++)
			if (setting(set[i]) != NULL) {
				idp_diag_add(
				    diag,
				    "audit sink: %s is for TLS, which this sink does not use "
				    "(protocol \"tls\" for syslog, an https:// url for a "
				    "webhook)",
				    keys[i]);
				goto fail;
			}
	}
	*out = s;
	return IDP_OK;
fail:
	audit_sink_free(s);
	return IDP_EINVAL;
}

const char *
audit_sink_describe(const struct audit_sink *s)
{
	return s->desc;
}

void
audit_sink_close(struct audit_sink *s)
{
	if (s->ssl != NULL) {
		/* close_notify, one try without waiting, on a sound connection only
		 * (OpenSSL forbids a shutdown after a fatal error). */
		ERR_clear_error();
		if (s->tls_clean)
			(void)SSL_shutdown(s->ssl);
		ERR_clear_error();
		SSL_free(s->ssl);
		s->ssl = NULL;
	}
	s->tls_clean = s->tls_unjudged = false;
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	s->unflushed = false;
	idp_buf_reset(&s->body);
	s->pending = 0;
}

void
audit_sink_free(struct audit_sink *s)
{
	if (s == NULL)
		return;
	audit_sink_close(s);
	free(s->path);
	free(s->host);
	free(s->port);
	free(s->target);
	free(s->authority);
	if (s->bearer != NULL)
		idp_wipe(s->bearer, strlen(s->bearer));
	free(s->bearer);
	free(s->version);
	SSL_CTX_free(s->tls_ctx);
	free(s->tls_name);
	idp_buf_cleanup(&s->body);
	idp_buf_cleanup(&s->line);
	idp_buf_cleanup(&s->frame);
	idp_buf_cleanup(&s->wire);
	free(s);
}

/* Record errno in diag and close the transport; returns err. */
static int
sys_fail(struct audit_sink *s, struct idp_diag *diag, int err, const char *what, int errnum)
{
	char buf[128];

	idp_diag_add(diag, "%s: %s: %s", s->desc, what, idp_strerror(errnum, buf, sizeof(buf)));
	s->tls_clean = false; /* a TLS operation may be half done: no close_notify */
	audit_sink_close(s);
	return err;
}

/* ---- file --------------------------------------------------------------- */

/* Whether a failed file call may succeed later without anyone's help. */
static bool
file_errno_transient(int e)
{
	return e == ENOSPC || e == EDQUOT || e == EINTR || e == EAGAIN || e == EIO || e == EMFILE ||
	       e == ENFILE || e == ENOMEM;
}

static int
file_open(struct audit_sink *s, struct idp_diag *diag)
{
	int fd = open(s->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);

	if (fd < 0) {
		int e = errno;

		return sys_fail(s, diag, file_errno_transient(e) ? IDP_EUNAVAIL : IDP_EIO, "open",
		                e);
	}
	s->fd = fd;
	return IDP_OK;
}

/*
 * If the path no longer names the open file (log rotation renamed or
 * removed it), close it so the next write creates a new file.  Called after
 * a successful sync, so nothing written to the old file is lost.
 */
static void
file_check_rotation(struct audit_sink *s)
{
	struct stat a, b;

	if (fstat(s->fd, &a) != 0)
		return;
	if (stat(s->path, &b) != 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev)
		audit_sink_close(s);
}

static int
file_write(struct audit_sink *s, const struct audit_sink_msg *m, struct idp_diag *diag)
{
	struct stat st;
	ssize_t w;
	int e;

	idp_buf_reset(&s->frame);
	if (idp_buf_append(&s->frame, m->line, m->len) != IDP_OK ||
	    idp_buf_putc(&s->frame, '\n') != IDP_OK)
		return IDP_ETOOBIG;
	if (fstat(s->fd, &st) != 0)
		return sys_fail(s, diag, IDP_EUNAVAIL, "fstat", errno);
	do {
		w = write(s->fd, s->frame.data, s->frame.len);
	} while (w < 0 && errno == EINTR);
	if (w == (ssize_t)s->frame.len)
		return IDP_OK;
	e = w < 0 ? errno : ENOSPC;
	/* Cut back a partial line so the file only ever holds whole lines. */
	if (w > 0 && ftruncate(s->fd, st.st_size) != 0) {
		idp_diag_add(diag, "%s: a partial line could not be removed", s->desc);
	}
	return sys_fail(s, diag, file_errno_transient(e) ? IDP_EUNAVAIL : IDP_EIO, "write", e);
}

/* ---- sockets ------------------------------------------------------------ */

static int64_t
deadline_after(int64_t ms)
{
	return idp_mono_us() + ms * 1000;
}

/* ---- TLS connections ------------------------------------------------- */

/*
 * Read whatever the receiver sent (session tickets are taken, data
 * dropped) until nothing more is there.  SSL_ERROR_WANT_READ or
 * SSL_ERROR_WANT_WRITE while the connection stands; otherwise it has
 * ended, no close_notify will be sent, and why (len bytes) says how: the
 * receiver's alert ("tlsv13 alert certificate required": SSL_ERROR_SSL),
 * the socket's error, or its close.
 */
static int
tls_read_all(struct audit_sink *s, char *why, size_t len)
{
	for (;;) {
		char scratch[512], buf[128];
		size_t got;
		int r, err;

		ERR_clear_error();
		r = SSL_read_ex(s->ssl, scratch, sizeof(scratch), &got);
		if (r == 1)
			continue;
		err = SSL_get_error(s->ssl, r);
		if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
			ERR_clear_error();
			return err;
		}
		if (err == SSL_ERROR_SSL)
			tls_client_reason(why, len);
		else if (err == SSL_ERROR_SYSCALL && s->sock.err != 0)
			snprintf(why, len, "%s", idp_strerror(s->sock.err, buf, sizeof(buf)));
		else
			snprintf(why, len, "the receiver closed the connection");
		ERR_clear_error();
		s->tls_clean = false;
		return err;
	}
}

/*
 * Why the socket under an established TLS connection failed (s->sock.err,
 * a reset say), into buf.  A receiver that refuses us after our handshake
 * sends an alert and closes with our lines unread, so its TCP resets the
 * connection; the alert, which says more, may still wait in the socket,
 * and is read first.
 */
static const char *
tls_reset_why(struct audit_sink *s, char *buf, size_t len)
{
	int e = s->sock.err;

	if (s->tls_clean && tls_read_all(s, buf, len) == SSL_ERROR_SSL)
		return buf;
	return idp_strerror(e, buf, len);
}

/*
 * A TLS call on s->ssl returned ret and failed: say why in diag, close
 * the transport.  Always IDP_EUNAVAIL: a receiver that is not trusted
 * today may be fixed on its side, and the shipper tries again from its
 * cursor either way.
 */
static int
tls_fail(struct audit_sink *s, struct idp_diag *diag, const char *what, int ret)
{
	int err = SSL_get_error(s->ssl, ret);
	long verify = SSL_get_verify_result(s->ssl);
	char buf[256];

	if (verify != X509_V_OK)
		idp_diag_add(diag, "%s: %s: the receiver's certificate failed verification: %s",
		             s->desc, what, X509_verify_cert_error_string(verify));
	else if (err == SSL_ERROR_SYSCALL && s->sock.err != 0)
		idp_diag_add(diag, "%s: %s: %s", s->desc, what, tls_reset_why(s, buf, sizeof(buf)));
	else if (err == SSL_ERROR_ZERO_RETURN ||
	         (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0))
		idp_diag_add(diag, "%s: %s: the receiver closed the connection", s->desc, what);
	else
		idp_diag_add(diag, "%s: %s: %s", s->desc, what,
		             tls_client_reason(buf, sizeof(buf)));
	ERR_clear_error();
	s->tls_clean = false;
	audit_sink_close(s);
	return IDP_EUNAVAIL;
}

/*
 * A TLS call on s->ssl returned ret: wait until the socket can do what it
 * asks for (read or write), at most until deadline; IDP_OK to call it
 * again, or the error (the transport closed).
 */
static int
tls_wait(struct audit_sink *s, int ret, int64_t deadline, const char *what, struct idp_diag *diag)
{
	int err = SSL_get_error(s->ssl, ret), e;

	if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE)
		return tls_fail(s, diag, what, ret);
	e = tls_client_wait_fd(s->fd, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline,
	                       s->stop_fd);
	return e == 0 ? IDP_OK : sys_fail(s, diag, IDP_EUNAVAIL, what, e);
}

/* The receiver asked for a client certificate (whether we have one or not). */
static int
tls_on_cert_request(SSL *ssl, void *arg)
{
	struct audit_sink *s = arg;

	(void)ssl;
	s->tls_cert_asked = true;
	return 1; /* go on with the certificate set, if any */
}

/*
 * TLS 1.3 ends the client's handshake before the server has judged the
 * client's certificate (or its lack of one): a receiver that refuses it
 * says so afterwards, with an alert.  Syslog lines sent meanwhile are
 * acknowledged by its TCP, then thrown away, and a flush would take them
 * for delivered.  So a syslog connection whose receiver asked for a
 * certificate waits for the verdict: a session ticket or any data (it took
 * us), an alert or the end of the stream (it did not), until deadline,
 * which the callers keep short (TLS_VERDICT_MS, not connect_timeout).  A
 * receiver that says nothing by then, as one that sends no tickets at
 * all, is taken to have accepted, and s->tls_unjudged stays set.
 * IDP_OK, or on a refusal the error, the transport closed and diag saying
 * why, with what as the step.  (A webhook needs none of this: only the
 * HTTP status moves its cursor.)
 */
static int
tls_verdict(struct audit_sink *s, int64_t deadline, const char *what, struct idp_diag *diag)
{
	while (!s->tls_ticket) {
		char scratch[256];
		size_t got;
		int r, err, e;

		ERR_clear_error();
		r = SSL_read_ex(s->ssl, scratch, sizeof(scratch), &got);
		if (r == 1)
			break; /* it speaks to us: it took us */
		err = SSL_get_error(s->ssl, r);
		if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE)
			return tls_fail(s, diag, what, r);
		if (s->tls_ticket)
			break;
		e = tls_client_wait_fd(s->fd, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT,
		                       deadline, s->stop_fd);
		if (e == ETIMEDOUT) {
			ERR_clear_error();
			return IDP_OK; /* silence: taken, the verdict still open */
		}
		if (e != 0)
			return sys_fail(s, diag, IDP_EUNAVAIL, what, e);
	}
	ERR_clear_error();
	s->tls_unjudged = false;
	return IDP_OK;
}

/*
 * TLS over the freshly connected s->fd, until deadline: the handshake, the
 * receiver's certificate verified against the sink's CAs and its name
 * (s->tls_name, as an IP address for a literal, otherwise as a DNS name
 * that is also sent as SNI).  On an error the transport is closed.
 */
static int
tls_connect(struct audit_sink *s, int64_t deadline, struct idp_diag *diag)
{
	char why[256];
	BIO *bio = NULL;
	int r, rc;
	bool named;

	ERR_clear_error();
	s->sock.eof = s->tls_cert_asked = s->tls_ticket = s->tls_unjudged = false;
	s->sock.err = 0;
	s->sock.fd = s->fd;
	if ((s->ssl = SSL_new(s->tls_ctx)) == NULL ||
	    (bio = tls_client_bio_new(&s->sock)) == NULL) {
		idp_diag_add(diag, "%s: TLS: %s", s->desc, tls_client_reason(why, sizeof(why)));
		audit_sink_close(s);
		return IDP_EUNAVAIL;
	}
	SSL_set_bio(s->ssl, bio, bio);
	SSL_set_app_data(s->ssl, s);
	SSL_set_cert_cb(s->ssl, tls_on_cert_request, s);
	named = tls_client_set_name(s->ssl, s->tls_name, s->tls_name_ip);
	if (!named) {
		idp_diag_add(diag, "%s: TLS: cannot set the name to verify: %s", s->desc,
		             tls_client_reason(why, sizeof(why)));
		audit_sink_close(s);
		return IDP_EUNAVAIL;
	}
	for (;;) {
		ERR_clear_error();
		r = SSL_connect(s->ssl);
		if (r == 1)
			break;
		if ((rc = tls_wait(s, r, deadline, "TLS handshake", diag)) != IDP_OK)
			return rc;
	}
	s->tls_clean = true;
	if (s->type != AUDIT_SINK_SYSLOG || !s->tls_cert_asked ||
	    SSL_version(s->ssl) != TLS1_3_VERSION)
		return IDP_OK;
	/*
	 * The receiver has yet to judge us.  With a certificate sent, no line
	 * goes before its verdict or TLS_VERDICT_MS.  Without one there is
	 * nothing to check, so a receiver that wants one refuses at once:
	 * the first flush's wait hears it, and a receiver that takes clients
	 * without certificates and sends no tickets is not made to wait twice.
	 */
	s->tls_unjudged = true;
	if (s->tls_cert) {
		int64_t bound = deadline_after(TLS_VERDICT_MS);

		return tls_verdict(s, bound < deadline ? bound : deadline, "TLS handshake", diag);
	}
	return IDP_OK;
}

/*
 * As tcp_peer_gone, through TLS: whether the receiver has ended the
 * connection (a close_notify, an alert, the end of the stream or an
 * error), and if so, why (len bytes) says how; see tls_read_all.
 */
static bool
tls_peer_gone(struct audit_sink *s, char *why, size_t len)
{
	int e = tls_read_all(s, why, len);

	return e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE;
}

/* send_all through TLS: the same deadline for the whole buffer. */
static int
tls_send_all(struct audit_sink *s, const char *p, size_t n, struct idp_diag *diag)
{
	int64_t deadline = deadline_after(s->send_timeout_ms);

	while (n > 0) {
		size_t w = 0;
		int r, rc;

		ERR_clear_error();
		r = SSL_write_ex(s->ssl, p, n, &w);
		if (r == 1) {
			p += w;
			n -= w;
			continue;
		}
		/* Called again with the same p and n, as OpenSSL wants after a retry. */
		if ((rc = tls_wait(s, r, deadline, "send", diag)) != IDP_OK)
			return rc;
	}
	return IDP_OK;
}

static int
sock_open(struct audit_sink *s, struct idp_diag *diag)
{
	int64_t deadline = deadline_after(s->connect_timeout_ms);
	int err, gai;

	tls_client_connect(s->host, s->port, s->protocol == AUDIT_PROTO_UDP, deadline, s->stop_fd,
	                   &s->fd, &err, &gai);
	if (gai != 0) {
		idp_diag_add(diag, "%s: resolve: %s", s->desc, gai_strerror(gai));
		/* A name that does not exist is a configuration error. */
		return gai == EAI_AGAIN || gai == EAI_SYSTEM || gai == EAI_MEMORY ? IDP_EUNAVAIL
		                                                                  : IDP_EIO;
	}
	if (s->fd < 0)
		return sys_fail(s, diag, IDP_EUNAVAIL, "connect", err);
	return s->tls ? tls_connect(s, deadline, diag) : IDP_OK;
}

/*
 * Whether the TCP peer has closed or reset the connection.  A syslog
 * receiver never sends, so whatever arrives is read and dropped; end of
 * stream or an error means bytes written now would be lost.
 */
static bool
tcp_peer_gone(int fd)
{
	char scratch[512];

	for (;;) {
		ssize_t n = recv(fd, scratch, sizeof(scratch), MSG_DONTWAIT);

		if (n > 0)
			continue;
		if (n == 0)
			return true;
		if (errno == EINTR)
			continue;
		return errno != EAGAIN && errno != EWOULDBLOCK;
	}
}

/* Whether a syslog receiver over TCP or TLS is gone (see above); why (len bytes) says how. */
static bool
peer_gone(struct audit_sink *s, char *why, size_t len)
{
	char buf[128];

	if (s->ssl != NULL)
		return tls_peer_gone(s, why, len);
	snprintf(why, len, "%s", idp_strerror(ECONNRESET, buf, sizeof(buf)));
	return tcp_peer_gone(s->fd);
}

static int
send_all(struct audit_sink *s, const char *p, size_t n, struct idp_diag *diag)
{
	int64_t deadline = deadline_after(s->send_timeout_ms);

	if (s->ssl != NULL)
		return tls_send_all(s, p, n, diag);
	while (n > 0) {
		ssize_t w = send(s->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		int e;

		if (w >= 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		e = errno;
		if (e == EINTR)
			continue;
		if (e != EAGAIN && e != EWOULDBLOCK)
			return sys_fail(s, diag, IDP_EUNAVAIL, "send", e);
		e = tls_client_wait_fd(s->fd, POLLOUT, deadline, s->stop_fd);
		if (e != 0)
			return sys_fail(s, diag, IDP_EUNAVAIL, "send", e);
	}
	return IDP_OK;
}

/* RFC 5424 severity for a CEF-style 0-10 severity. */
static int
syslog_severity(int sev)
{
	if (sev >= 9)
		return 2; /* critical */
	if (sev >= 7)
		return 3; /* error */
	if (sev >= 5)
		return 4; /* warning */
	if (sev >= 3)
		return 5; /* notice */
	return 6;         /* informational */
}

/* s->frame = RFC 5424 header + line, without framing. */
static int
syslog_message(struct audit_sink *s, const struct audit_sink_msg *m)
{
	char ts[32] = "-", msgid[MSGID_MAX + 1];
	int rc;

	if (m->ts_ms != AUDIT_TIME_UNSET)
		idp_time_format(m->ts_ms, ts);
	header_token(m->msgid, msgid, MSGID_MAX);
	idp_buf_reset(&s->frame);
	rc = idp_buf_printf(&s->frame, "<%d>1 %s %s %s %ld %s - ",
	                    s->facility * 8 + syslog_severity(m->severity), ts, s->hostname,
	                    APP_NAME, (long)getpid(), msgid);
	return rc == IDP_OK ? idp_buf_append(&s->frame, m->line, m->len) : rc;
}

static int
tcp_write(struct audit_sink *s, const struct audit_sink_msg *m, struct idp_diag *diag)
{
	int rc = syslog_message(s, m);

	if (rc != IDP_OK)
		return rc;
	/*
	 * RFC 6587 octet counting: "MSG-LEN SP SYSLOG-MSG", in one send so the
	 * frame does not wait on Nagle's algorithm between its two parts.
	 */
	idp_buf_reset(&s->wire);
	rc = idp_buf_printf(&s->wire, "%zu ", s->frame.len);
	if (rc == IDP_OK)
		rc = idp_buf_append(&s->wire, s->frame.data, s->frame.len);
	if (rc == IDP_OK)
		rc = send_all(s, s->wire.data, s->wire.len, diag);
	if (rc == IDP_OK)
		s->unflushed = true;
	return rc;
}

/* The longest prefix of p[0..n) of at most max bytes that ends on a UTF-8 boundary. */
static size_t
utf8_cut(const char *p, size_t n, size_t max)
{
	if (n <= max)
		return n;
	while (max > 0 && ((unsigned char)p[max] & 0xc0) == 0x80)
		max--;
	return max;
}

static int
udp_write(struct audit_sink *s, const struct audit_sink_msg *m, struct idp_diag *diag)
{
	size_t len;
	ssize_t w;
	int rc = syslog_message(s, m);

	if (rc != IDP_OK)
		return rc;
	len = utf8_cut(s->frame.data, s->frame.len, s->udp_max);
	do {
		w = send(s->fd, s->frame.data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
	} while (w < 0 && errno == EINTR);
	if (w < 0)
		return sys_fail(s, diag, IDP_EUNAVAIL, "send", errno);
	return IDP_OK;
}

/* ---- webhook ------------------------------------------------------------ */

static int webhook_flush(struct audit_sink *s, struct idp_diag *diag);

/*
 * The line joins the next flush's body; nothing is sent yet, unless the
 * body has reached WEBHOOK_BODY_MAX: then it goes first, so that a batch
 * of large events is not held in memory whole.  (If that POST fails, the
 * caller sends everything again from its cursor, as after any error.)
 */
static int
webhook_write(struct audit_sink *s, const struct audit_sink_msg *m, struct idp_diag *diag)
{
	int rc;

	if (s->body.len + m->len > WEBHOOK_BODY_MAX && s->pending > 0 &&
	    (rc = webhook_flush(s, diag)) != IDP_OK)
		return rc;
	rc = idp_buf_puts(&s->body, s->pending == 0 ? "{\"events\":[" : ",");

	if (rc == IDP_OK)
		rc = idp_buf_append(&s->body, m->line, m->len);
	if (rc == IDP_OK)
		s->pending++;
	return rc;
}

/*
 * Some bytes of the answer into buf, waiting for them until deadline; *got
 * is 0 at the end of the stream.  On an error the transport is closed.
 */
static int
sock_recv(struct audit_sink *s, char *buf, size_t len, int64_t deadline, size_t *got,
          struct idp_diag *diag)
{
	for (;;) {
		ssize_t r;
		int e;

		if (s->ssl != NULL) {
			/* Read first: TLS may hold decrypted bytes the socket no longer shows. */
			ERR_clear_error();
			e = SSL_read_ex(s->ssl, buf, len, got);
			if (e == 1)
				return IDP_OK;
			if (SSL_get_error(s->ssl, e) == SSL_ERROR_ZERO_RETURN) {
				*got = 0;
				return IDP_OK;
			}
			if ((e = tls_wait(s, e, deadline, "answer", diag)) != IDP_OK)
				return e;
			continue;
		}
		e = tls_client_wait_fd(s->fd, POLLIN, deadline, s->stop_fd);
		if (e != 0)
			return sys_fail(s, diag, IDP_EUNAVAIL, "answer", e);
		r = recv(s->fd, buf, len, MSG_DONTWAIT);
		if (r >= 0) {
			*got = (size_t)r;
			return IDP_OK;
		}
		if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
			return sys_fail(s, diag, IDP_EUNAVAIL, "answer", errno);
	}
}

/*
 * Read the receiver's status line, within send_timeout_ms.  The rest of the
 * answer is not read: the request said Connection: close.
 */
static int
webhook_status(struct audit_sink *s, int *status, struct idp_diag *diag)
{
	int64_t deadline = deadline_after(s->send_timeout_ms);
	char buf[512];
	size_t n = 0;

	while (n == 0 || memchr(buf, '\n', n) == NULL) {
		size_t got = 0;
		int rc;

		if (n == sizeof(buf) - 1) {
			idp_diag_add(diag, "%s: the answer's status line is too long", s->desc);
			audit_sink_close(s);
			return IDP_EUNAVAIL;
		}
		rc = sock_recv(s, buf + n, sizeof(buf) - 1 - n, deadline, &got, diag);
		if (rc != IDP_OK)
			return rc;
		if (got == 0)
			return sys_fail(s, diag, IDP_EUNAVAIL, "answer", ECONNRESET);
		n += got;
	}
	buf[n] = '\0';
	/* "HTTP/1.x NNN ..." */
	if (strncmp(buf, "HTTP/1.", 7) != 0 || buf[7] < '0' || buf[7] > '9' || buf[8] != ' ' ||
	    buf[9] < '1' || buf[9] > '5' || buf[10] < '0' || buf[10] > '9' || buf[11] < '0' ||
	    buf[11] > '9') {
		idp_diag_add(diag, "%s: the answer is not HTTP/1", s->desc);
		audit_sink_close(s);
		return IDP_EUNAVAIL;
	}
	*status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
	return IDP_OK;
}

/* The body as a POST on a connection of its own; IDP_OK on a 2xx.  Leaves the body for
 * webhook_flush to drop. */
static int
webhook_post(struct audit_sink *s, struct idp_diag *diag)
{
	int status = 0, rc;

	if (s->pending == 0)
		return IDP_OK;
	rc = idp_buf_puts(&s->body, "]}");
	idp_buf_reset(&s->wire);
	if (rc == IDP_OK)
		rc = idp_buf_printf(&s->wire,
		                    "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s/%s\r\n"
		                    "Content-Type: application/json\r\nContent-Length: %zu\r\n"
		                    "Connection: close\r\n",
		                    s->target, s->authority, APP_NAME, s->version, s->body.len);
	if (rc == IDP_OK && s->bearer != NULL)
		rc = idp_buf_printf(&s->wire, "Authorization: Bearer %s\r\n", s->bearer);
	if (rc == IDP_OK)
		rc = idp_buf_puts(&s->wire, "\r\n");
	if (rc == IDP_OK)
		rc = sock_open(s, diag);
	if (rc == IDP_OK) {
		rc = send_all(s, s->wire.data, s->wire.len, diag);
		idp_wipe(s->wire.data, s->wire.len); /* the bearer token */
	}
	if (rc == IDP_OK)
		rc = send_all(s, s->body.data, s->body.len, diag);
	if (rc == IDP_OK)
		rc = webhook_status(s, &status, diag);
	if (rc == IDP_OK && (status < 200 || status > 299)) {
		idp_diag_add(diag, "%s: the receiver answered %d", s->desc, status);
		rc = IDP_EUNAVAIL;
	}
	return rc;
}
/*
 * POST the body on a connection of its own; IDP_OK on a 2xx.  Whatever
 * happens, the body is gone afterwards (audit_sink_close): after a failure
 * the caller writes the same events again from its cursor, and a body kept
 * would send them twice, behind a "]}" that ends the document early.
 */
static int
webhook_flush(struct audit_sink *s, struct idp_diag *diag)
{
	int rc = webhook_post(s, diag);

	audit_sink_close(s);
	return rc;
}

/* ---- the interface ------------------------------------------------------ */

int
audit_sink_open(struct audit_sink *s, struct idp_diag *diag)
{
	if (s->fd >= 0 || s->type == AUDIT_SINK_WEBHOOK) /* a webhook connects per flush */
		return IDP_OK;
	return s->type == AUDIT_SINK_FILE ? file_open(s, diag) : sock_open(s, diag);
}

int
audit_sink_write(struct audit_sink *s, const struct audit_sink_msg *m, struct idp_diag *diag)
{
	char why[256];
	int rc;

	if (memchr(m->line, '\n', m->len) != NULL || memchr(m->line, '\r', m->len) != NULL) {
		idp_diag_add(diag, "%s: a line may not contain a line break", s->desc);
		return IDP_EINVAL;
	}
	if (m->len > AUDIT_SINK_LINE_MAX) {
		idp_diag_add(diag, "%s: line of %zu bytes is over the %d byte limit", s->desc,
		             m->len, AUDIT_SINK_LINE_MAX);
		return IDP_ETOOBIG;
	}
	if (s->type == AUDIT_SINK_WEBHOOK)
		return webhook_write(s, m, diag);
	if (s->fd >= 0 && s->type == AUDIT_SINK_SYSLOG && s->protocol != AUDIT_PROTO_UDP &&
	    peer_gone(s, why, sizeof(why))) {
		/* What was sent since the last flush may never have arrived: the
		 * caller must send it again from its cursor, not carry on over a
		 * new connection as if it had. */
		bool lost = s->unflushed;

		audit_sink_close(s);
		if (lost) {
			idp_diag_add(diag, "%s: send: %s", s->desc, why);
			return IDP_EUNAVAIL;
		}
	}
	rc = audit_sink_open(s, diag);
	if (rc != IDP_OK)
		return rc;
	if (s->type == AUDIT_SINK_FILE)
		return file_write(s, m, diag);
	/* TLS (RFC 5425) frames as TCP does; send_all encrypts. */
	return s->protocol == AUDIT_PROTO_UDP ? udp_write(s, m, diag) : tcp_write(s, m, diag);
}

int
audit_sink_write_event(struct audit_sink *s, const struct audit_event *ev, struct idp_diag *diag)
{
	struct audit_sink_msg m;
	int rc;

	idp_buf_reset(&s->line);
	rc = audit_format_line(s->format, ev, s->version, &s->line);
	if (rc != IDP_OK) {
		idp_diag_add(diag, "%s: formatted event is over %d bytes", s->desc,
		             AUDIT_SINK_LINE_MAX);
		return rc;
	}
	m.line = idp_buf_str(&s->line);
	m.len = s->line.len;
	m.ts_ms = audit_event_time(ev);
	m.msgid = audit_event_type_name(ev);
	m.severity = audit_event_severity(ev);
	return audit_sink_write(s, &m, diag);
}

/* The kernel's TCP state of fd (TCP_ESTABLISHED, TCP_CLOSE, ...), or -1. */
static int
tcp_state(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
		return -1;
	return ti.tcpi_state;
}

/*
 * Wait until the peer's TCP has acknowledged everything sent.  An empty send
 * queue alone proves nothing: a reset empties it too, so the connection must
 * also not have been closed under us.
 */
/* A flush waits at most this many send_timeouts, acknowledgements or not. */
#define DRAIN_CAP_TIMEOUTS 12

static int
tcp_drain(struct audit_sink *s, struct idp_diag *diag)
{
	int64_t deadline = deadline_after(s->send_timeout_ms);
	/* However slowly it keeps acknowledging, a flush ends: a reload or a
	 * stop waits for it. */
	int64_t cap = deadline_after(s->send_timeout_ms * DRAIN_CAP_TIMEOUTS);
	int last = -1;

	for (;;) {
		struct timespec ts = {0, 5 * 1000 * 1000};
		int queued = 0, state;

		if (ioctl(s->fd, SIOCOUTQ, &queued) != 0)
			return sys_fail(s, diag, IDP_EUNAVAIL, "ioctl(SIOCOUTQ)", errno);
		state = tcp_state(s->fd);
		if (state < 0 || state == TCP_CLOSE) {
			char why[256];

			if (s->ssl == NULL)
				return sys_fail(s, diag, IDP_EUNAVAIL, "flush", ECONNRESET);
			s->sock.err = ECONNRESET;
			idp_diag_add(diag, "%s: flush: %s", s->desc,
			             tls_reset_why(s, why, sizeof(why)));
			s->tls_clean = false;
			audit_sink_close(s);
			return IDP_EUNAVAIL;
		}
		if (queued == 0)
			return IDP_OK;
		/*
		 * send_timeout is how long nothing may be acknowledged, not
		 * how long the whole backlog may take: a slow receiver that
		 * keeps reading is waited for (giving up would send the same
		 * batch again and again), one that stopped is given up on.
		 */
		if (last >= 0 && queued < last)
			deadline = deadline_after(s->send_timeout_ms);
		last = queued;
		if (tls_client_ms_left(deadline) == 0 || tls_client_ms_left(cap) == 0)
			return sys_fail(s, diag, IDP_EUNAVAIL, "flush", ETIMEDOUT);
		/* Acknowledgements raise no event to wait for: look again
		 * shortly (not a poll of the socket, which would return at once
		 * after a FIN), unless the shipper is told to stop meanwhile. */
		if (s->stop_fd >= 0) {
			struct pollfd stop = {s->stop_fd, POLLIN, 0};

			if (poll(&stop, 1, 5) > 0)
				return sys_fail(s, diag, IDP_EUNAVAIL, "flush", ECANCELED);
		} else {
			nanosleep(&ts, NULL);
		}
	}
}

size_t
audit_sink_pending(const struct audit_sink *s)
{
	return s->pending;
}

void
audit_sink_stop_fd(struct audit_sink *s, int fd)
{
	s->stop_fd = fd;
}

int
audit_sink_flush(struct audit_sink *s, struct idp_diag *diag)
{
	if (s->type == AUDIT_SINK_WEBHOOK)
		return webhook_flush(s, diag);
	if (s->fd < 0)
		return IDP_OK;
	if (s->type == AUDIT_SINK_FILE) {
		if (s->fsync && fdatasync(s->fd) != 0)
			return sys_fail(s, diag, IDP_EUNAVAIL, "fdatasync", errno);
		file_check_rotation(s);
		return IDP_OK;
	}
	if (s->protocol != AUDIT_PROTO_UDP) {
		int rc = tcp_drain(s, diag);
		char why[256];

		/*
		 * TLS bytes are on the wire once SSL_write returns (this file's
		 * BIO buffers nothing), so the drain counts them all.  On a new
		 * connection whose receiver may still refuse our certificate
		 * (tls_connect), its TCP took them without a verdict: the first
		 * flush gives it TLS_VERDICT_MS more to refuse, and a refusal
		 * fails the flush, so those lines go again.
		 */
		if (rc == IDP_OK && s->ssl != NULL && s->tls_unjudged) {
			int64_t ms = s->send_timeout_ms < TLS_VERDICT_MS ? s->send_timeout_ms
			                                                 : TLS_VERDICT_MS;

			rc = tls_verdict(s, deadline_after(ms), "flush", diag);
			if (rc == IDP_OK)
				s->tls_unjudged = false; /* silence too: taken */
		}
		if (rc == IDP_OK && s->ssl != NULL && tls_peer_gone(s, why, sizeof(why))) {
			idp_diag_add(diag, "%s: flush: %s", s->desc, why);
			audit_sink_close(s);
			rc = IDP_EUNAVAIL;
		}
		if (rc == IDP_OK)
			s->unflushed = false;
		return rc;
	}
	return IDP_OK;
}
