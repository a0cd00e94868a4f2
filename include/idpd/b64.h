/*
 * b64.h - base64url (RFC 4648 section 5, no padding) and standard base64
 * (section 4, padded), with strict decoders.
 *
 * The decoders accept exactly one spelling of each byte string: no padding
 * in base64url, exact padding in base64, no whitespace, no characters from
 * the other alphabet, no length that cannot come from an encoder and no
 * non-zero bits left over in the last character.  A token that could be
 * spelled two ways could be replayed or deduplicated wrongly, so idpd never
 * accepts the second spelling.
 *
 * Every function here is pure and safe from any thread.
 */
#ifndef IDPD_B64_H
#define IDPD_B64_H

#include <stddef.h>

#include "idpd/common.h"

/* Length of the base64url text for n bytes, without a NUL. */
size_t idp_b64url_encoded_len(size_t n);
/* Upper bound on the bytes a base64url text of len characters decodes to. */
size_t idp_b64url_decoded_max(size_t len);

/*
 * Encode n bytes into out, which has room for idp_b64url_encoded_len(n) + 1
 * bytes; out is NUL-terminated.  Returns the text length.  Cannot fail.
 */
size_t idp_b64url_encode_to(const void *data, size_t n, char *out);
/* Encode into a new string the caller frees; *out_len (if not NULL) gets its length. */
char *idp_b64url_encode(const void *data, size_t n, size_t *out_len);

/*
 * Decode len characters of base64url into out (capacity cap).  Returns 0 and
 * sets *out_len, IDP_EINVAL for any text a strict decoder must refuse, or
 * IDP_ETOOBIG if cap is too small.  On error the contents of out are
 * unspecified (possibly partly written); wipe it if it was meant for a secret.
 */
int idp_b64url_decode(const char *s, size_t len, unsigned char *out, size_t cap,
                      size_t *out_len) IDP_WUR;
/*
 * Decode into a new buffer the caller frees (NUL-terminated for convenience,
 * the NUL not counted in *out_len).  On error *out is NULL.
 */
int idp_b64url_decode_alloc(const char *s, size_t len, unsigned char **out,
                            size_t *out_len) IDP_WUR;

/* Standard base64, padded to a multiple of 4 characters. */
size_t idp_b64_encoded_len(size_t n);
size_t idp_b64_encode_to(const void *data, size_t n, char *out);
/* Same contract as idp_b64url_decode, for the padded standard alphabet. */
int idp_b64_decode(const char *s, size_t len, unsigned char *out, size_t cap,
                   size_t *out_len) IDP_WUR;

#endif /* IDPD_B64_H */
