/*
 * audit_sink.h - transports that carry formatted audit lines to a SIEM: an
 * append-only file, syslog (RFC 5424) over TCP (RFC 6587 octet counting),
 * over TLS (RFC 5425: the same framing inside TLS) or over UDP (one
 * datagram per message), or a webhook: an HTTP POST, over http or https,
 * of the lines written since the last flush, as one JSON document, to a
 * receiver such as a portal that tells people what happened (a task
 * completed, an approval waiting).
 *
 * TLS always verifies the receiver: its certificate must chain to ca_file
 * (or to OpenSSL's default trust store) and name the host of the address
 * or URL (or server_name); TLS 1.2 at least.  There is no way to turn
 * verification off.
 *
 * A sink owns its configuration copy, its file descriptor and its buffers.
 * It is used by one thread at a time (a sink's shipper); distinct sinks are
 * independent.  A sink that loses its transport reopens it on the next
 * write, so the caller's loop is: write lines, flush, advance the cursor;
 * on an error, back off and write again from the last flushed line.
 *
 * Errors from write and flush fall into two classes (audit_sink_retryable):
 *   IDP_EUNAVAIL          retry later: the receiver is down, a timeout, the
 *                         disk is full.  Nothing since the last successful
 *                         flush may be assumed delivered.
 *   anything else         permanent: the same call fails the same way until
 *                         the configuration or the environment changes
 *                         (IDP_EIO: no permission, read-only file system;
 *                         IDP_ETOOBIG: a line over AUDIT_SINK_LINE_MAX;
 *                         IDP_EINVAL: a line with a line break in it).
 * The diag, when given, says what happened.
 */
#ifndef IDPD_AUDIT_SINK_H
#define IDPD_AUDIT_SINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idpd/audit.h"
#include "idpd/common.h"

struct audit_sink;

enum audit_sink_type { AUDIT_SINK_FILE, AUDIT_SINK_SYSLOG, AUDIT_SINK_WEBHOOK };
enum audit_sink_proto { AUDIT_PROTO_TCP, AUDIT_PROTO_UDP, AUDIT_PROTO_TLS };

const char *audit_sink_type_name(enum audit_sink_type t); /* "file", "syslog", "webhook" */
int audit_sink_type_parse(const char *s, enum audit_sink_type *out) IDP_WUR;
const char *audit_sink_proto_name(enum audit_sink_proto p); /* "tcp", "udp", "tls" */
int audit_sink_proto_parse(const char *s, enum audit_sink_proto *out) IDP_WUR;

#define AUDIT_SINK_LINE_MAX (256 * 1024) /* one formatted line, header excluded */
#define AUDIT_SINK_UDP_MIN 480           /* RFC 5426: every receiver takes this much */
#define AUDIT_SINK_UDP_MAX 65507         /* the most one IPv4 UDP datagram holds */

/*
 * One [[audit.sinks]] entry.  Strings are borrowed; audit_sink_new copies
 * them.  audit_sink_config_defaults fills every field but type and the
 * path or address.
 */
struct audit_sink_config {
	enum audit_sink_type type;
	enum audit_format format;       /* json (default), cef, leef */
	const char *path;               /* file: appended to, created 0640 */
	const char *address;            /* syslog: "host:port" or "[v6addr]:port" */
	enum audit_sink_proto protocol; /* syslog: tcp (default), tls or udp */
	const char *hostname;           /* RFC 5424 HOSTNAME; NULL: gethostname() */
	const char *version;            /* idpd's version for CEF/LEEF headers */
	int facility;                   /* syslog facility 0-23; 13 (log audit) */
	int64_t connect_timeout_ms;     /* 5000 */
	int64_t send_timeout_ms;        /* 5000; also bounds a TCP flush */
	size_t udp_max;                 /* whole datagram, 2048; see truncation */
	bool fsync;                     /* file: flush() calls fdatasync(); true */
	const char *url;                /* webhook: "http[s]://host[:port][/path]" */
	const char *bearer;             /* webhook: sent as "Authorization: Bearer"; NULL: none */
	/* TLS (syslog over tls, https webhook) only; each NULL when unset. */
	const char *ca_file; /* PEM bundle the receiver must chain to; NULL: OpenSSL's default */
	const char *server_name; /* the name verified and sent as SNI; NULL: the host */
	const char *cert_file;   /* client certificate chain (PEM) for mutual TLS */
	const char *key_file;    /* its private key (PEM, not encrypted); both or neither */
};

void audit_sink_config_defaults(struct audit_sink_config *c);

/*
 * Validate cfg and make a sink in the closed state; no network I/O happens
 * here.  A TLS sink reads its ca_file, cert_file and key_file now, once:
 * one that cannot be read or parsed, or a key that does not match its
 * certificate, is a setting that is wrong.  On success *out is the
 * caller's (audit_sink_free).  On failure *out is NULL, the result is
 * IDP_EINVAL and diag says which setting is wrong (never what a key holds).
 */
int audit_sink_new(const struct audit_sink_config *cfg, struct audit_sink **out,
                   struct idp_diag *diag) IDP_WUR;

/*
 * Open the transport now if it is closed: open the file, or resolve the
 * address and connect (non-blocking, bounded by connect_timeout_ms; with
 * TLS, the handshake and the receiver's verification within the same
 * bound: a receiver that fails verification is IDP_EUNAVAIL, as one that
 * is down).
 * Writes do this themselves; call it to learn early that a sink is
 * unreachable.  Errors as described at the top of this file.
 */
int audit_sink_open(struct audit_sink *s, struct idp_diag *diag) IDP_WUR;

/* One message: a formatted line plus what the syslog header needs. */
struct audit_sink_msg {
	const char *line; /* no LF or CR anywhere, no trailing newline */
	size_t len;
	int64_t ts_ms;     /* RFC 5424 TIMESTAMP; AUDIT_TIME_UNSET gives "-" */
	const char *msgid; /* RFC 5424 MSGID, the event type; NULL gives "-" */
	int severity;      /* 0-10, mapped to a syslog severity */
};

/*
 * Send one message.  A file gets line + "\n" in one write(2), and if that
 * write is cut short the file is truncated back, so it holds whole lines
 * only.  TCP and TLS get "<len> <syslog message>"; UDP one datagram of at most
 * udp_max bytes, the message cut at a UTF-8 boundary if longer.  Reopens a
 * closed or broken transport first; never raises SIGPIPE.  A webhook
 * adds the line (a JSON document: the format must be json) to the next
 * flush's body; nothing is sent before the flush unless the body has
 * reached 4 MiB, which is then POSTed first (as a flush would).
 */
int audit_sink_write(struct audit_sink *s, const struct audit_sink_msg *m,
                     struct idp_diag *diag) IDP_WUR;

/* Format ev in the sink's format and audit_sink_write it. */
int audit_sink_write_event(struct audit_sink *s, const struct audit_event *ev,
                           struct idp_diag *diag) IDP_WUR;

/*
 * Make what was written durable as far as the transport can tell: a file is
 * fdatasync()ed (when fsync is set); a TCP or TLS sink waits, up to
 * send_timeout_ms, until the receiver's TCP has acknowledged every byte; a
 * UDP sink cannot know and returns 0.  A webhook POSTs
 * {"events":[<line>,...]} on a new connection and succeeds only
 * on a 2xx status (anything else, or no answer within send_timeout_ms, is
 * IDP_EUNAVAIL).  On an error the transport is closed, and everything since
 * the last successful flush must be written again.
 */
int audit_sink_flush(struct audit_sink *s, struct idp_diag *diag) IDP_WUR;

/* Events a webhook holds for its next flush (0 for the other types). */
size_t audit_sink_pending(const struct audit_sink *s);

/*
 * A descriptor whose becoming readable cuts a connect's, a send's or a TCP
 * flush's wait short (it then fails, as a timeout does): the shipper's
 * stop.  -1 for none (the default).  Borrowed; before the sink is used.
 */
void audit_sink_stop_fd(struct audit_sink *s, int fd);
/* Close the transport (a webhook's unsent body is dropped); the next write reopens it.  Idempotent.
 */
void audit_sink_close(struct audit_sink *s);
/* Close and free.  NULL is a no-op. */
void audit_sink_free(struct audit_sink *s);

/* Whether err from this API means "try again later" (IDP_EUNAVAIL). */
bool audit_sink_retryable(int err);

/* "file /var/log/idpd/audit.log (json)", for logs and metrics labels. */
const char *audit_sink_describe(const struct audit_sink *s);

#endif /* IDPD_AUDIT_SINK_H */
