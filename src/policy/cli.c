/*
 * cli.c - `idpd policy check DIR`, `idpd policy test DIR` and
 * `idpd policy eval DIR INPUT.json`.
 *
 * Test files are DIR/tests/NAME.json (format in docs/policy-language.md): a
 * "base" input, and "cases", each an "input" merged over the base and an
 * "expect" with the decision and, optionally, the applied rule ids, the rules
 * that errored, the reason and the conditions.  `test` prints one line per
 * failure and, last, "N passed, N failed".
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/buf.h"
#include "idpd/config.h"
#include "idpd/scope.h"
#include "policy_int.h"

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: idpd policy check DIR\n"
	        "       idpd policy test DIR [--time-zone NAME] [--config FILE]\n"
	        "       idpd policy eval DIR INPUT.json [--time-zone NAME] [--config FILE]\n"
	        "  --config: the deployment's [[policy.verbs]] and policy.timezone, as idpd serve "
	        "sees them\n");
}

static int
load(const char *dir, struct policy_set **set)
{
	struct idp_diag *d = idp_xmalloc(sizeof(*d));
	int rc;

	idp_diag_init(d);
	rc = policy_set_load_dir(dir, NULL, set, d);
	if (rc != IDP_OK) {
		fprintf(stderr, "%s\n", idp_diag_str(d));
		if (d->count > 0 && d->len + 64 >= sizeof(d->text))
			fprintf(stderr, "(output cut short; fix the errors above first)\n");
	}
	free(d);
	return rc;
}

static int
cmd_check(const char *dir)
{
	struct policy_set *set;

	if (load(dir, &set) != IDP_OK)
		return 1;
	printf("%s: %zu rules, %s\n", dir, policy_set_rule_count(set), policy_set_hash(set));
	policy_set_unref(set);
	return 0;
}

/* Merge src into dst: objects recursively, anything else replaced. */
static void
merge(json_t *dst, json_t *src)
{
	const char *k;
	json_t *v;

	json_object_foreach(src, k, v)
	{
		json_t *cur = json_object_get(dst, k);

		if (json_is_object(cur) && json_is_object(v))
			merge(cur, v);
		else
			json_object_set_new(dst, k, json_deep_copy(v));
	}
}

/* Whether the JSON array of strings want equals the set got (order ignored). */
static bool
same_ids(const json_t *want, const char *const *got, size_t n)
{
	if (!json_is_array(want) || json_array_size(want) != n)
		return false;
	for (size_t i = 0; i < n; i++) {
		bool found = false;

		for (size_t j = 0; j < n && !found; j++) {
			const json_t *w = json_array_get(want, j);

			found = json_is_string(w) && strcmp(json_string_value(w), got[i]) == 0;
		}
		if (!found)
			return false;
	}
	return true;
}

/* Append to a failure description; a description cut at the buffer's cap is fine. */
static void IDP_PRINTF(2, 3) say(struct idp_buf *b, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (idp_buf_vprintf(b, fmt, ap) != IDP_OK) {
		/* The description is only cut short. */
	}
	va_end(ap);
}

static void
join(struct idp_buf *b, const char *const *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		say(b, "%s%s", i ? ", " : "", v[i]);
	if (n == 0)
		say(b, "none");
}

/* Compare a decision with expect; on mismatch describe it in why. */
static bool
check_case(const struct policy_decision *d, const json_t *expect, struct idp_buf *why)
{
	const char *applied[POLICY_MAX_MATCHES], *errored[POLICY_MAX_MATCHES];
	size_t na = 0, ne = 0;
	const char *want = json_string_value(json_object_get(expect, "decision"));
	const json_t *v;
	bool ok = true;

	for (size_t i = 0; i < d->n_matches; i++) {
		if (d->matches[i].applied)
			applied[na++] = policy_rule_id(d->matches[i].rule);
		if (d->matches[i].error != NULL)
			errored[ne++] = policy_rule_id(d->matches[i].rule);
	}
	if (want == NULL || strcmp(want, policy_effect_name(d->effect)) != 0) {
		say(why, "decision: expected %s, got %s (%s); ", want ? want : "(missing)",
		    policy_effect_name(d->effect), d->reason);
		ok = false;
	}
	if ((v = json_object_get(expect, "rules")) != NULL && !same_ids(v, applied, na)) {
		say(why, "rules: got ");
		join(why, applied, na);
		say(why, "; ");
		ok = false;
	}
	if ((v = json_object_get(expect, "errored")) != NULL && !same_ids(v, errored, ne)) {
		say(why, "errored: got ");
		join(why, errored, ne);
		say(why, "; ");
		ok = false;
	}
	if ((v = json_object_get(expect, "reason")) != NULL &&
	    (!json_is_string(v) || strcmp(json_string_value(v), d->reason) != 0)) {
		say(why, "reason: got \"%s\"; ", d->reason);
		ok = false;
	}
	/* Conditions are applied only with ALLOW_WITH_CONDITIONS: a case must
	 * not prove a limit that another decision would never enforce. */
	if ((v = json_object_get(expect, "conditions")) != NULL &&
	    d->effect != POLICY_ALLOW_WITH_CONDITIONS) {
		say(why, "conditions: none apply to %s; ", policy_effect_name(d->effect));
		ok = false;
	} else if (v != NULL) {
		const json_t *ttl = json_object_get(v, "max_ttl");
		const json_t *sc = json_object_get(v, "scopes");
		const json_t *lg = json_object_get(v, "enhanced_logging");

		if (ttl != NULL && (!d->cond.has_max_ttl || !json_is_integer(ttl) ||
		                    json_integer_value(ttl) != d->cond.max_ttl)) {
			say(why, "max_ttl: got %lld; ",
			    d->cond.has_max_ttl ? (long long)d->cond.max_ttl : -1LL);
			ok = false;
		}
		if (sc != NULL &&
		    (!d->cond.narrowed || !same_ids(sc, d->cond.scopes, d->cond.n_scopes))) {
			say(why, "scopes: got ");
			join(why, d->cond.scopes, d->cond.n_scopes);
			say(why, "; ");
			ok = false;
		}
		if (lg != NULL &&
		    (!json_is_boolean(lg) || json_is_true(lg) != d->cond.enhanced_logging)) {
			say(why, "enhanced_logging: got %s; ",
			    d->cond.enhanced_logging ? "true" : "false");
			ok = false;
		}
	}
	return ok;
}

struct tally {
	unsigned passed, failed;
};

static void
run_file(const struct policy_set *set, const char *path, const struct policy_json_opts *opts,
         struct tally *t)
{
	json_error_t jerr;
	json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
	const json_t *base, *cases;

	if (root == NULL) {
		printf("FAIL %s:%d:%d: %s\n", path, jerr.line, jerr.column, jerr.text);
		t->failed++;
		return;
	}
	base = json_object_get(root, "base");
	cases = json_object_get(root, "cases");
	if (!json_is_array(cases) || json_array_size(cases) == 0 ||
	    (base != NULL && !json_is_object(base))) {
		printf("FAIL %s: expected {\"base\": {...}, \"cases\": [...]} with at least one "
		       "case\n",
		       path);
		t->failed++;
		json_decref(root);
		return;
	}
	for (size_t i = 0; i < json_array_size(cases); i++) {
		const json_t *c = json_array_get(cases, i);
		const char *name = json_string_value(json_object_get(c, "name"));
		json_t *input = base != NULL ? json_deep_copy(base) : json_object();
		const json_t *ci = json_object_get(c, "input"),
		             *expect = json_object_get(c, "expect");
		struct policy_input_doc *doc = NULL;
		struct policy_decision d;
		struct idp_diag *diag = idp_xmalloc(sizeof(*diag));
		struct idp_buf why;

		idp_diag_init(diag);
		idp_buf_init(&why, 4096);
		if (name == NULL)
			name = "(unnamed)";
		if (ci != NULL && json_is_object(ci))
			merge(input, (json_t *)ci);
		if (!json_is_object(expect) || (ci != NULL && !json_is_object(ci))) {
			printf("FAIL %s: case %zu \"%s\": needs an \"input\" object and an "
			       "\"expect\" object\n",
			       path, i + 1, name);
			t->failed++;
		} else if (policy_input_from_json(input, opts, &doc, diag) != IDP_OK) {
			printf("FAIL %s: case %zu \"%s\": bad input: %s\n", path, i + 1, name,
			       idp_diag_str(diag));
			t->failed++;
		} else {
			policy_eval(set, policy_input_doc_input(doc), &d);
			if (check_case(&d, expect, &why)) {
				t->passed++;
			} else {
				printf("FAIL %s: case %zu \"%s\": %s\n", path, i + 1, name,
				       idp_buf_str(&why));
				t->failed++;
			}
		}
		policy_input_doc_free(doc);
		json_decref(input);
		idp_buf_cleanup(&why);
		free(diag);
	}
	json_decref(root);
}

static int
name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int
load_tz(const char *name, struct policy_tz **tz)
{
	struct idp_diag d;

	*tz = NULL;
	if (name == NULL)
		return IDP_OK;
	idp_diag_init(&d);
	if (policy_tz_load(name, NULL, tz, &d) != IDP_OK) {
		fprintf(stderr, "%s\n", idp_diag_str(&d));
		return IDP_EINVAL;
	}
	return IDP_OK;
}

static int
cmd_test(const char *dir, const char *tzname)
{
	struct policy_set *set = NULL;
	struct policy_tz *tz = NULL;
	struct tally t = {0, 0};
	struct policy_json_opts opts = {NULL, NULL, false};
	char *tdir = idp_xasprintf("%s/tests", dir), ebuf[128];
	char **names = NULL;
	size_t n = 0;
	struct dirent *e;
	DIR *d;

	if (load_tz(tzname, &tz) != IDP_OK || load(dir, &set) != IDP_OK) {
		t.failed = 1;
		goto done;
	}
	opts.tz = tz;
	d = opendir(tdir);
	if (d == NULL) {
		printf("FAIL %s: %s\n", tdir, idp_strerror(errno, ebuf, sizeof(ebuf)));
		t.failed = 1;
		goto done;
	}
	while ((e = readdir(d)) != NULL) {
		size_t l = strlen(e->d_name);

		if (e->d_name[0] == '.' || l < 6 || strcmp(e->d_name + l - 5, ".json") != 0)
			continue;
		names = idp_xrealloc(names, (n + 1) * sizeof(*names));
		names[n++] = idp_xasprintf("%s/%s", tdir, e->d_name);
	}
	closedir(d);
	if (n == 0) {
		printf("FAIL %s: no *.json test files\n", tdir);
		t.failed = 1;
		goto done;
	}
	qsort(names, n, sizeof(*names), name_cmp);
	for (size_t i = 0; i < n; i++)
		run_file(set, names[i], &opts, &t);
done:
	printf("%u passed, %u failed\n", t.passed, t.failed);
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	free(tdir);
	policy_set_unref(set);
	policy_tz_free(tz);
	return t.failed == 0 ? 0 : 1;
}

static int
cmd_eval(const char *dir, const char *input_path, const char *tzname)
{
	struct policy_set *set = NULL;
	struct policy_tz *tz = NULL;
	struct policy_input_doc *doc = NULL;
	struct policy_json_opts opts = {NULL, NULL, false};
	struct policy_decision dec;
	struct idp_diag *diag = idp_xmalloc(sizeof(*diag));
	json_error_t jerr;
	json_t *in = NULL, *out;
	char *text;
	int rc = 1;

	idp_diag_init(diag);
	if (load_tz(tzname, &tz) != IDP_OK || load(dir, &set) != IDP_OK)
		goto done;
	in = json_load_file(input_path, JSON_REJECT_DUPLICATES, &jerr);
	if (in == NULL) {
		fprintf(stderr, "%s:%d:%d: %s\n", input_path, jerr.line, jerr.column, jerr.text);
		goto done;
	}
	opts.tz = tz;
	if (policy_input_from_json(in, &opts, &doc, diag) != IDP_OK) {
		fprintf(stderr, "%s: %s\n", input_path, idp_diag_str(diag));
		goto done;
	}
	policy_eval(set, policy_input_doc_input(doc), &dec);
	out = policy_decision_json(&dec);
	text = json_dumps(out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	if (text != NULL)
		printf("%s\n", text);
	free(text);
	json_decref(out);
	rc = dec.effect == POLICY_DENY ? 2 : 0;
done:
	policy_input_doc_free(doc);
	json_decref(in);
	policy_set_unref(set);
	policy_tz_free(tz);
	free(diag);
	return rc;
}

/*
 * --config FILE: the deployment's verb classes, installed as `idpd serve`
 * does, and its time zone unless --time-zone names one.  0, or 1 after
 * saying why.
 */
static int
use_config(const char *path, struct idpd_config **cfg, const char **tz)
{
	struct idp_diag diag;
	struct scope_verb_map *m;

	idp_diag_init(&diag);
	if (idpd_config_load(path, cfg, &diag) != IDP_OK) {
		fprintf(stderr, "%s\nidpd: %u error(s) in %s\n", idp_diag_str(&diag), diag.count,
		        path);
		return 1;
	}
	m = scope_verb_map_from_config(*cfg, &diag);
	if (m == NULL) {
		fprintf(stderr, "policy.verbs: %s\n", idp_diag_str(&diag));
		return 1;
	}
	scope_verb_map_install(m);
	if (*tz == NULL)
		*tz = (*cfg)->policy.timezone;
	return 0;
}

int
policy_cli_main(int argc, char **argv)
{
	const char *tz = NULL, *config = NULL;
	const char *pos[3] = {NULL, NULL, NULL};
	struct idpd_config *cfg = NULL;
	int npos = 0, rc = 2;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--time-zone") == 0 && i + 1 < argc) {
			tz = argv[++i];
		} else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
			config = argv[++i];
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		} else if (argv[i][0] == '-' || npos == 3) {
			usage(stderr);
			return 2;
		} else {
			pos[npos++] = argv[i];
		}
	}
	if (npos == 2 && strcmp(pos[0], "check") == 0 && config == NULL)
		return cmd_check(pos[1]);
	if (config != NULL && (npos < 2 || strcmp(pos[0], "check") == 0)) {
		usage(stderr);
		return 2;
	}
	if (config != NULL && use_config(config, &cfg, &tz) != 0)
		return 1;
	if (npos == 2 && strcmp(pos[0], "test") == 0)
		rc = cmd_test(pos[1], tz);
	else if (npos == 3 && strcmp(pos[0], "eval") == 0)
		rc = cmd_eval(pos[1], pos[2], tz);
	else
		usage(stderr);
	/* tz may point into cfg: both are done with by now. */
	scope_verb_map_install(NULL);
	idpd_config_free(cfg);
	return rc;
}
