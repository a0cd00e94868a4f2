/*
 * store_int.h - what the store's own files share and nobody else needs.
 */
#ifndef IDPD_STORE_INT_H
#define IDPD_STORE_INT_H

#include <libpq-fe.h>
#include <stdint.h>

/*
 * Connect to url (a libpq URI or conninfo string).  Returns NULL with a
 * one-line reason in err.  The URL may hold a password: never log it.
 * The session runs with synchronous_commit = on whatever the database or
 * role sets, so that a COMMIT that returns is durable.
 */
PGconn *store_connect_url(const char *url, int64_t connect_timeout_ms, int64_t stmt_timeout_ms,
                          char *err, size_t err_len);

#endif /* IDPD_STORE_INT_H */
