/*
 * problem.c - the one table from idp_err to HTTP status and problem code,
 * and the RFC 9457 problem+json body.
 */
#include <stdio.h>
#include <string.h>

#include "idpd/http.h"

static const struct {
	int err;
	int status;
	const char *code;
} err_table[] = {
	{IDP_EINVAL, 400, "bad_request"},
	{IDP_EUNPROCESSABLE, 422, "unprocessable"},
	{IDP_ENOTFOUND, 404, "not_found"},
	{IDP_ECONFLICT, 409, "conflict"},
	{IDP_EPRECOND, 412, "precondition_failed"},
	{IDP_EUNAUTH, 401, "unauthorized"},
	{IDP_EFORBIDDEN, 403, "forbidden"},
	{IDP_ETOOBIG, 413, "payload_too_large"},
	{IDP_EUNAVAIL, 503, "unavailable"},
	{IDP_EIO, 500, "internal"},
	{IDP_EINTERNAL, 500, "internal"},
};

json_t *
http_diag_lines(const struct idp_diag *d)
{
	json_t *a = json_array();
	const char *p = idp_diag_str(d);

	while (*p != '\0') {
		size_t n = strcspn(p, "\n");
		json_t *line = json_stringn(p, n);

		if (line != NULL)
			json_array_append_new(a, line);
		p += n;
		if (*p == '\n')
			p++;
	}
	return a;
}

int
http_status_for(int err)
{
	for (size_t i = 0; i < IDP_ARRAY_LEN(err_table); i++)
		if (err_table[i].err == err)
			return err_table[i].status;
	return 500;
}

const char *
http_code_for(int err)
{
	for (size_t i = 0; i < IDP_ARRAY_LEN(err_table); i++)
		if (err_table[i].err == err)
			return err_table[i].code;
	return "internal";
}

const char *
http_status_title(int status)
{
	switch (status) {
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 410: return "Gone";
	case 412: return "Precondition Failed";
	case 413: return "Content Too Large";
	case 415: return "Unsupported Media Type";
	case 422: return "Unprocessable Content";
	case 428: return "Precondition Required";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 503: return "Service Unavailable";
	}
	return "Error";
}
