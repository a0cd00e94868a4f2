/*
 * libFuzzer target for audit event intake: audit_event_from_json, then
 * everything an accepted event goes through (canonical form, hash, the
 * three line formats, the alert rules), with these properties checked:
 *
 *   - the canonical form parses back to an event with the same canonical
 *     form (the hash chain depends on it);
 *   - no formatted line contains LF or CR;
 *   - a clone serialises exactly like its original;
 *   - redacting an arbitrary JSON value twice changes nothing the second time;
 *   - audit_event_from_stored (a sink reading a row back) accepts whatever
 *     intake accepts, gives back a body without line breaks byte for byte
 *     unless it redacted something, reads what it gave back to the same
 *     text again, and what it accepts formats into lines without LF or CR.
 *
 * A broken property aborts, which libFuzzer reports as a crash.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/audit.h"
#include "idpd/audit_alerts.h"
#include "idpd/buf.h"
#include "idpd/clock.h"

static struct idp_clock clock_;
static struct audit_alerts *alerts;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "fuzz_audit_event: property broken: %s\n", what);
		abort();
	}
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct audit_alert_config c;
	struct idp_diag d;

	(void)argc;
	(void)argv;
	idp_clock_fixed(&clock_, 1774620923456LL);
	audit_alert_config_defaults(&c);
	c.escalation_threshold = 2;
	c.novelty_min_events = 1;
	c.novelty_max_items = 4;
	c.max_agents = 8;
	idp_diag_init(&d);
	check(audit_alerts_new(&c, &clock_, &alerts, &d) == IDP_OK, "alerts");
	return 0;
}

static void
check_formats(const struct audit_event *ev)
{
	struct idp_buf b;

	idp_buf_init(&b, 0);
	for (int f = AUDIT_FORMAT_JSON; f <= AUDIT_FORMAT_LEEF; f++) {
		idp_buf_reset(&b);
		check(audit_format_line((enum audit_format)f, ev, "1.0|x\\y", &b) == IDP_OK,
		      "format");
		check(memchr(b.data, '\n', b.len) == NULL, "no LF in a line");
		check(memchr(b.data, '\r', b.len) == NULL, "no CR in a line");
	}
	idp_buf_cleanup(&b);
}

static void
check_redaction(const uint8_t *data, size_t size)
{
	json_t *j = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
	char *once, *twice;

	if (j == NULL)
		return;
	if (audit_redact_params(j) == IDP_OK) {
		once = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
		check(audit_redact_params(j) == IDP_OK, "redact again");
		twice = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
		check(once != NULL && twice != NULL && strcmp(once, twice) == 0,
		      "redaction is idempotent");
		free(once);
		free(twice);
	}
	json_decref(j);
}

static void
check_stored(const uint8_t *data, size_t size, int intake_ok)
{
	struct audit_event *ev = NULL, *back = NULL, *copy;
	char *c1, *c2, *c3;
	size_t len;

	if (audit_event_from_stored((const char *)data, size, &ev, NULL) != IDP_OK) {
		check(ev == NULL, "no stored event on failure");
		check(!intake_ok, "a row intake accepts is read back");
		return;
	}
	c1 = audit_event_canonical(ev, &len);
	check(strlen(c1) == len, "stored length");
	/* As it was, unless it had line breaks or something to redact. */
	if (memchr(data, '\n', size) == NULL && memchr(data, '\r', size) == NULL &&
	    (len != size || memcmp(c1, data, size) != 0))
		check(strstr(c1, "[REDACTED]") != NULL, "a row comes back as it was");
	check(audit_event_from_stored(c1, len, &back, NULL) == IDP_OK,
	      "a row read back reads again");
	c3 = audit_event_canonical(back, NULL);
	check(strcmp(c1, c3) == 0, "reading a row back is a fixed point");
	copy = audit_event_clone(ev);
	c2 = audit_event_canonical(copy, NULL);
	check(strcmp(c1, c2) == 0, "a stored clone serialises alike");
	check_formats(ev);
	free(c1);
	free(c2);
	free(c3);
	audit_event_free(back);
	audit_event_free(copy);
	audit_event_free(ev);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct audit_event *ev = NULL, *back = NULL, *copy;
	struct audit_event *raised[AUDIT_ALERTS_MAX_PER_EVENT];
	uint8_t h[AUDIT_HASH_LEN];
	char *c1, *c2, *c3;
	size_t len, n;

	check_redaction(data, size);
	if (audit_event_from_json((const char *)data, size, &ev, NULL) != IDP_OK) {
		check(ev == NULL, "no event on failure");
		check_stored(data, size, 0);
		return 0;
	}
	check_stored(data, size, 1);
	c1 = audit_event_canonical(ev, &len);
	check(strlen(c1) == len, "canonical length");
	check(audit_event_from_json(c1, len, &back, NULL) == IDP_OK, "canonical parses back");
	c2 = audit_event_canonical(back, NULL);
	check(strcmp(c1, c2) == 0, "canonical is a fixed point");
	copy = audit_event_clone(ev);
	c3 = audit_event_canonical(copy, NULL);
	check(strcmp(c1, c3) == 0, "clone serialises alike");
	check(audit_chain_hash(audit_genesis_hash, c1, len, h) == IDP_OK, "hash");
	check_formats(ev);
	n = audit_alerts_feed(alerts, ev, raised);
	for (size_t i = 0; i < n; i++) {
		check_formats(raised[i]);
		audit_event_free(raised[i]);
	}
	clock_.fixed_ms += 1000;
	free(c1);
	free(c2);
	free(c3);
	audit_event_free(ev);
	audit_event_free(back);
	audit_event_free(copy);
	return 0;
}
