/*
 * tls_client.h - the pieces of an outbound TLS client that idpd's callers
 * share: the audit sinks (syslog over TLS, https webhooks) and the fetch of
 * identity providers' key sets from a jwks_uri.
 *
 * Sockets are non-blocking from creation; every wait is a poll(2) against a
 * deadline on the monotonic clock (microseconds, idp_mono_us), so no call
 * blocks past its deadline (name resolution excepted: getaddrinfo has no
 * timeout).  Every send passes MSG_NOSIGNAL.  TLS runs over the same socket
 * through a BIO of this module (tls_client_bio_new), so it keeps both
 * rules.  Verification is always on: a context trusts ca_file or the system
 * store, and each connection checks the peer's name (tls_client_set_name).
 * Any thread; nothing here holds global state but a BIO method made once.
 */
#ifndef IDPD_TLS_CLIENT_H
#define IDPD_TLS_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "idpd/common.h"

/* ---- names and addresses ---- */

/* "host:port" or "[v6]:port" -> host and port (new strings); false if malformed. */
bool tls_client_split_address(const char *addr, char **host, char **port);
/*
 * "http[s]://host[:port][/path]" -> whether it is https, host, port (80 or
 * 443 by default), the authority for Host and the request target (new
 * strings); false if malformed.  No userinfo (a password would sit in the
 * configuration and every log line naming the URL) and no fragment; the
 * target is visible ASCII.
 */
bool tls_client_split_url(const char *url, bool *tls, char **host, char **port, char **authority,
                          char **target);
/* Whether name is an IPv4 or IPv6 literal (without brackets). */
bool tls_client_is_ip_literal(const char *name);
/*
 * Whether name can be checked against a certificate's DNS names and sent
 * as SNI (TLS_CLIENT_DNS_NAME_RULE says what that is).
 */
bool tls_client_is_dns_name(const char *name);
#define TLS_CLIENT_DNS_NAME_RULE                                                                   \
	"a DNS name is labels of 1-63 letters, digits, '-' or '_' joined by single dots, with no " \
	"'-' at either end of a label and no trailing dot"

/* ---- TLS settings ---- */

/* Why the first failed OpenSSL call of this thread failed, into buf; empties its error queue. */
const char *tls_client_reason(char *buf, size_t len);
/*
 * A client context: TLS 1.2 or later, the peer's certificate always
 * verified against ca_file (PEM, NULL or "": the system's trust store), no
 * renegotiation, and an encrypted key never asking a terminal for its
 * passphrase.  NULL with diag saying why, each message starting with what
 * ("audit sink", "idp \"corp\"").  The caller frees it (SSL_CTX_free).
 */
SSL_CTX *tls_client_ctx_new(const char *ca_file, const char *what, struct idp_diag *diag);

/* ---- connections ---- */

/* Milliseconds left until deadline (idp_mono_us), at most 60000 for poll(); 0 once past. */
int tls_client_ms_left(int64_t deadline);

/*
 * Wait until fd is ready for events, at most until deadline (idp_mono_us);
 * 0, or ETIMEDOUT / an errno, or ECANCELED once stop_fd (-1 for none) is
 * readable: the caller is told to stop.
 */
int tls_client_wait_fd(int fd, short events, int64_t deadline, int stop_fd);
/*
 * A non-blocking TCP (SOCK_STREAM) or UDP (udp) socket connected to host
 * and port, trying each address in turn, until deadline.  *fd, or -1 with
 * *err the errno of the last attempt, or with *gai a getaddrinfo error (0
 * otherwise).
 */
void tls_client_connect(const char *host, const char *port, bool udp, int64_t deadline, int stop_fd,
                        int *fd, int *err, int *gai);

/* The socket under a TLS connection, as its BIO sees it. */
struct tls_client_sock {
	int fd;
	bool eof; /* a read met the end of the stream */
	int err;  /* the last send or recv errno, 0 for none */
};
/*
 * A BIO that reads and writes s->fd without blocking and without SIGPIPE;
 * "would block" goes back to the caller, who polls against its deadline.
 * s must outlive the BIO.  NULL if OpenSSL cannot make it.
 */
BIO *tls_client_bio_new(struct tls_client_sock *s);
/*
 * Make ssl check the peer's certificate against name: as an IP address for
 * a literal, otherwise as a DNS name (no partial wildcards) that is also
 * sent as SNI.  false if OpenSSL refuses.
 */
bool tls_client_set_name(SSL *ssl, const char *name, bool is_ip);

#endif /* IDPD_TLS_CLIENT_H */
