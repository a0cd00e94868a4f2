/*
 * scope.c - scope patterns, glob containment and action classes (see scope.h).
 *
 * Containment rests on one observation.  Patterns only have '*', and the
 * scope charset has characters a given pattern does not use.  Replace every
 * '*' of the requested pattern by such a fresh character: the resulting
 * string is matched by the candidate pattern only if the candidate's own '*'
 * swallow each fresh character, which is the same as matching the candidate
 * against the requested pattern read literally, its '*' an ordinary byte
 * that only a '*' can absorb.  So "requested within pattern" is a single glob
 * match of pattern against the text of requested.  When a pattern uses every
 * character of the charset the argument weakens, but only towards "not
 * within": a literal match still proves containment.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "idpd/config.h"
#include "idpd/scope.h"
#include "policy_int.h"

static bool
scope_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '-' || c == '/' || c == '*';
}

/* Check one part; NULL if fine, else why not.  *stars counts its '*'. */
static const char *
check_part(const char *p, size_t n, unsigned *stars)
{
	if (n == 0)
		return "empty part";
	for (size_t i = 0; i < n; i++) {
		if (!scope_char((unsigned char)p[i]))
			return "character not allowed (letters, digits, \"._-/\" and '*')";
		if (p[i] == '*')
			(*stars)++;
	}
	return NULL;
}

static bool glob_match_n(const char *p, size_t plen, const char *t, size_t tlen);

/* Byte classes for the one-pass scanner: 0 invalid, 1 ordinary, 2 '*', 3 ':'. */
static const unsigned char byte_class[256] = {
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1,
    ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1,
    ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1,
    ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1,
    ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1, ['.'] = 1, ['_'] = 1,
    ['-'] = 1, ['/'] = 1, ['*'] = 2, [':'] = 3,
};

bool
scope_scan(const char *s, struct scope_split *out)
{
	size_t i, colon = 0, colons = 0, stars = 0;

	for (i = 0; s[i] != '\0'; i++) {
		unsigned c = byte_class[(unsigned char)s[i]];

		if (c == 0 || i >= IDP_SCOPE_MAX_LEN)
			return false;
		if (c == 3) {
			colon = i;
			colons++;
		}
		stars += c == 2;
	}
	if (colons != 1 || colon == 0 || colon + 1 == i || stars > IDP_SCOPE_MAX_STARS)
		return false;
	out->s = s;
	out->colon = colon;
	out->len = i;
	return true;
}

bool
scope_within_split(const struct scope_split *r, const struct scope_split *p)
{
	return glob_match_n(p->s, p->colon, r->s, r->colon) &&
	       glob_match_n(p->s + p->colon + 1, p->len - p->colon - 1, r->s + r->colon + 1,
	                    r->len - r->colon - 1);
}

int
scope_validate(const char *s, struct idp_diag *diag)
{
	const char *colon, *why = NULL;
	unsigned stars = 0;
	size_t len;

	if (s == NULL) {
		if (diag != NULL)
			idp_diag_add(diag, "scope: missing");
		return IDP_EINVAL;
	}
	{
		struct scope_split sp;

		if (scope_scan(s, &sp))
			return IDP_OK;
	}
	/* Invalid: find the reason, in the order the rules are listed. */
	len = strnlen(s, IDP_SCOPE_MAX_LEN + 1);
	colon = memchr(s, ':', len);
	if (len > IDP_SCOPE_MAX_LEN)
		why = "longer than 256 bytes";
	else if (colon == NULL)
		why = "no ':' between resource and verb";
	else if (memchr(colon + 1, ':', len - (size_t)(colon + 1 - s)) != NULL)
		why = "more than one ':'";
	else if ((why = check_part(s, (size_t)(colon - s), &stars)) != NULL ||
	         (why = check_part(colon + 1, len - (size_t)(colon + 1 - s), &stars)) != NULL)
		;
	else if (stars > IDP_SCOPE_MAX_STARS)
		why = "more than 4 '*'";
	if (why == NULL)
		return IDP_OK;
	if (diag != NULL)
		idp_diag_add(diag, "scope \"%.64s\": %s", s, why);
	return IDP_EINVAL;
}

bool
scope_is_pattern(const char *s)
{
	return strchr(s, '*') != NULL;
}

/*
 * Iterative glob match with backtracking to the last '*': with '*' the only
 * wildcard, resuming from the most recent star is enough, so the work is
 * O(plen * tlen) and nothing recurses.
 */
static bool
glob_match_n(const char *p, size_t plen, const char *t, size_t tlen)
{
	size_t pi = 0, ti = 0, star_p = SIZE_MAX, star_t = 0;

	while (ti < tlen) {
		if (pi < plen && p[pi] == '*') {
			star_p = pi++;
			star_t = ti;
		} else if (pi < plen && p[pi] == t[ti]) {
			pi++;
			ti++;
		} else if (star_p != SIZE_MAX) {
			pi = star_p + 1;
			ti = ++star_t;
		} else {
			return false;
		}
	}
	while (pi < plen && p[pi] == '*')
		pi++;
	return pi == plen;
}

bool
scope_glob_match(const char *pattern, const char *text)
{
	return glob_match_n(pattern, strlen(pattern), text, strlen(text));
}

/* Both arguments already validated: match each part separately. */
bool
scope_within_valid(const char *requested, const char *pattern)
{
	const char *rc = strchr(requested, ':'), *pc = strchr(pattern, ':');

	return glob_match_n(pattern, (size_t)(pc - pattern), requested, (size_t)(rc - requested)) &&
	       glob_match_n(pc + 1, strlen(pc + 1), rc + 1, strlen(rc + 1));
}

bool
scope_pattern_within(const char *requested, const char *pattern)
{
	if (scope_validate(requested, NULL) != IDP_OK || scope_validate(pattern, NULL) != IDP_OK)
		return false;
	return scope_within_valid(requested, pattern);
}

bool
scope_within(const char *requested, const char *const *patterns, size_t n)
{
	if (scope_validate(requested, NULL) != IDP_OK)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (patterns[i] != NULL && scope_pattern_within(requested, patterns[i]))
			return true;
	}
	return false;
}

/*
 * Whether a[0..la) and b[0..lb) match a common string.  f(i, j) says whether
 * the suffixes a[i..] and b[j..] do: a '*' may stop, or swallow the next
 * symbol of the other side (a literal, or the output of the other's '*');
 * two literals must agree.  Filled from the ends with two rows, so the work
 * is O(la * lb) and the stack use O(lb).
 */
static bool
glob_overlap_n(const char *a, size_t la, const char *b, size_t lb)
{
	bool row[2][IDP_SCOPE_MAX_LEN + 2];
	bool *next = row[0], *cur = row[1], *tmp;

	/*
	 * A cheap necessary condition first: a common string begins with the
	 * literal text before each side's first '*' and ends with the text
	 * after each side's last one, so where those disagree nothing is
	 * common.  Most pairs (a verb against the class map) part there.
	 */
	for (size_t i = 0; i < la && i < lb && a[i] != '*' && b[i] != '*'; i++)
		if (a[i] != b[i])
			return false;
	for (size_t k = 1; k <= la && k <= lb && a[la - k] != '*' && b[lb - k] != '*'; k++)
		if (a[la - k] != b[lb - k])
			return false;
	if (lb > IDP_SCOPE_MAX_LEN)
		return true; /* never reached for valid scopes; "overlaps" is the safe answer */
	for (size_t ii = la + 1; ii-- > 0;) {
		for (size_t jj = lb + 1; jj-- > 0;) {
			bool v;

			if (ii == la && jj == lb)
				v = true;
			else if (ii < la && a[ii] == '*')
				v = next[jj] || (jj < lb && cur[jj + 1]);
			else if (jj < lb && b[jj] == '*')
				v = cur[jj + 1] || (ii < la && next[jj]);
			else if (ii < la && jj < lb && a[ii] == b[jj])
				v = next[jj + 1];
			else
				v = false;
			cur[jj] = v;
		}
		tmp = next;
		next = cur;
		cur = tmp;
	}
	return next[0];
}

bool
scope_glob_overlap(const char *a, const char *b)
{
	return glob_overlap_n(a, strlen(a), b, strlen(b));
}

/* ---- action classes ---------------------------------------------------- */

#define VERB_MAP_MAX 256

struct verb_entry {
	const char *verb;
	enum idp_action_class cls;
};

struct scope_verb_map {
	struct verb_entry *entries;
	size_t n;
	bool owned; /* entries and their strings are heap copies */
};

static const struct verb_entry default_entries[] = {
    {"Describe*", IDP_ACTION_READ},  {"List*", IDP_ACTION_READ},
    {"Get*", IDP_ACTION_READ},       {"Read*", IDP_ACTION_READ},
    {"read", IDP_ACTION_READ},       {"write", IDP_ACTION_WRITE},
    {"Put*", IDP_ACTION_WRITE},      {"Create*", IDP_ACTION_WRITE},
    {"Update*", IDP_ACTION_WRITE},   {"Modify*", IDP_ACTION_WRITE},
    {"delete", IDP_ACTION_DELETE},   {"Delete*", IDP_ACTION_DELETE},
    {"Remove*", IDP_ACTION_DELETE},  {"Terminate*", IDP_ACTION_DELETE},
    {"Destroy*", IDP_ACTION_DELETE}, {"Purge*", IDP_ACTION_DELETE},
    {"Drop*", IDP_ACTION_DELETE},    {"Truncate*", IDP_ACTION_DELETE},
    {"admin", IDP_ACTION_ADMIN},     {"Admin*", IDP_ACTION_ADMIN},
    {"Grant*", IDP_ACTION_ADMIN},    {"Revoke*", IDP_ACTION_ADMIN},
};

/* s (a valid verb, so at most IDP_SCOPE_MAX_LEN bytes) in lower case into out, strlen(s) + 1 long.
 */
static void
fold(const char *s, char *out)
{
	size_t i;

	for (i = 0; s[i] != '\0' && i < IDP_SCOPE_MAX_LEN; i++)
		out[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] - 'A' + 'a') : s[i];
	out[i] = '\0';
}

static const struct scope_verb_map default_map = {(struct verb_entry *)default_entries,
                                                  IDP_ARRAY_LEN(default_entries), false};

static const char *const class_names[IDP_ACTION_COUNT] = {"read", "write", "delete", "admin"};

const char *
idp_action_class_name(enum idp_action_class c)
{
	if ((unsigned)c < IDP_ACTION_COUNT)
		return class_names[c];
	return "admin";
}

int
idp_action_class_parse(const char *s)
{
	for (int i = 0; i < IDP_ACTION_COUNT; i++) {
		if (strcmp(s, class_names[i]) == 0)
			return i;
	}
	return -1;
}

const struct scope_verb_map *
scope_verb_map_default(void)
{
	return &default_map;
}

struct scope_verb_map *
scope_verb_map_new(void)
{
	struct scope_verb_map *m = idp_xcalloc(1, sizeof(*m));

	m->entries = idp_xcalloc(VERB_MAP_MAX, sizeof(*m->entries));
	m->owned = true;
	return m;
}

void
scope_verb_map_free(struct scope_verb_map *m)
{
	if (m == NULL || !m->owned)
		return;
	for (size_t i = 0; i < m->n; i++)
		free((char *)m->entries[i].verb);
	free(m->entries);
	free(m);
}

/* A verb (pattern) on its own: the verb part's rules. */
static int
verb_validate(const char *verb)
{
	unsigned stars = 0;
	size_t n = strnlen(verb, IDP_SCOPE_MAX_LEN + 1);

	if (n > IDP_SCOPE_MAX_LEN || check_part(verb, n, &stars) != NULL ||
	    stars > IDP_SCOPE_MAX_STARS)
		return IDP_EINVAL;
	return IDP_OK;
}

bool
scope_verb_valid(const char *verb)
{
	return verb != NULL && verb_validate(verb) == IDP_OK;
}

struct scope_verb_map *
scope_verb_map_with(const char *const *verbs, const enum idp_action_class *classes, size_t n,
                    struct idp_diag *diag)
{
	struct scope_verb_map *m = scope_verb_map_new();
	int rc = IDP_OK;

	for (size_t i = 0; i < IDP_ARRAY_LEN(default_entries) && rc == IDP_OK; i++)
		rc = scope_verb_map_add(m, default_entries[i].verb, default_entries[i].cls, diag);
	for (size_t i = 0; i < n && rc == IDP_OK; i++)
		rc = scope_verb_map_add(m, verbs[i], classes[i], diag);
	if (rc != IDP_OK) {
		scope_verb_map_free(m);
		return NULL;
	}
	return m;
}

struct scope_verb_map *
scope_verb_map_from_config(const struct idpd_config *cfg, struct idp_diag *diag)
{
	size_t n = cfg->policy.n_verbs;
	const char **verbs = idp_xcalloc(n + 1, sizeof(*verbs));
	enum idp_action_class *classes = idp_xcalloc(n + 1, sizeof(*classes));
	struct scope_verb_map *m;

	for (size_t i = 0; i < n; i++) {
		int c = idp_action_class_parse(cfg->policy.verbs[i].class);

		verbs[i] = cfg->policy.verbs[i].verb;
		/* The config reader admits only the four names; admin if not. */
		classes[i] = c >= 0 ? (enum idp_action_class)c : IDP_ACTION_ADMIN;
	}
	m = scope_verb_map_with(verbs, classes, n, diag);
	free(verbs);
	free(classes);
	return m;
}

/* Written on the main thread before readers start; read-only afterwards. */
static struct scope_verb_map *installed;

const struct scope_verb_map *
scope_verb_map_current(void)
{
	return installed != NULL ? installed : &default_map;
}

void
scope_verb_map_install(struct scope_verb_map *m)
{
	struct scope_verb_map *prev = installed;

	installed = m;
	scope_verb_map_free(prev);
}

int
scope_verb_map_add(struct scope_verb_map *m, const char *verb, enum idp_action_class c,
                   struct idp_diag *diag)
{

	if (verb_validate(verb) != IDP_OK || (unsigned)c >= IDP_ACTION_COUNT) {
		if (diag != NULL)
			idp_diag_add(diag, "verb \"%.64s\": not a valid verb pattern", verb);
		return IDP_EINVAL;
	}
	if (!m->owned || m->n >= VERB_MAP_MAX) {
		if (diag != NULL)
			idp_diag_add(diag, "verb map: more than %d entries", VERB_MAP_MAX);
		return IDP_ETOOBIG;
	}
	m->entries[m->n].verb = idp_xstrdup(verb);
	m->entries[m->n].cls = c;
	m->n++;
	return IDP_OK;
}

static bool
is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static bool
is_alpha(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/*
 * Whether a verb's byte at i starts a new word: at a CamelCase hump
 * ("GetObject", "XMLWrite"), or where letters and digits meet ("V2write").
 */
static bool
word_starts(const char *v, size_t i)
{
	char c = v[i], p = i > 0 ? v[i - 1] : '\0', n = c != '\0' ? v[i + 1] : '\0';

	if (i == 0)
		return true;
	if ((is_digit(c) && is_alpha(p)) || (is_alpha(c) && is_digit(p)))
		return true;
	if (c < 'A' || c > 'Z')
		return false;
	return (p >= 'a' && p <= 'z') || (p >= 'A' && p <= 'Z' && n >= 'a' && n <= 'z');
}

/* '*' ends a word too: "GetOrCreate*" has the word "Create". */
static bool
word_sep(char c)
{
	return c == '_' || c == '-' || c == '.' || c == '/' || c == '*';
}

static bool
is_upper(char c)
{
	return c >= 'A' && c <= 'Z';
}

/*
 * Entry e's stem in lower case without separators ("kill" of "Kill_*"),
 * into out; its length, or 0 when e is not "Stem" or "Stem*" or is not
 * above best.
 */
static size_t
entry_stem(const struct verb_entry *e, enum idp_action_class best, char *out, size_t cap)
{
	size_t n = strcspn(e->verb, "*"), k = 0;

	if (e->cls <= best || (e->verb[n] != '\0' && e->verb[n + 1] != '\0'))
		return 0;
	for (size_t i = 0; i < n && k + 1 < cap; i++)
		if (!word_sep(e->verb[i]))
			out[k++] = (char)tolower((unsigned char)e->verb[i]);
	out[k] = '\0';
	return k;
}

#define WORDS_MAX (IDP_SCOPE_MAX_LEN / 2 + 1)

/*
 * The highest class a compound verb's words name, case ignored, when an
 * entry "Stem" or "Stem*" above read has for its stem:
 *   - one or more whole words in a row: "ReadWrite" and "GetOrCreateUser"
 *     start like reads but say write, and odd capitals split a word into
 *     several ("GetDeLeTe", "ReadWrItE"), as they split a stem with a digit
 *     or two words ("Nuke2", "ForceStop");
 *   - a part of a run of capitals, at any offset ("GetObjectANDDELETE",
 *     "GetREADWRITE"): a run is one word to the humps, not to a reader.
 * "GetSettings" stays read (no entry names "Settings"), and so does
 * "DescribeComputeEnvironments": "put" inside "Compute" is no word.
 */
static enum idp_action_class
word_class(const struct scope_verb_map *m, const char *verb)
{
	enum idp_action_class best = IDP_ACTION_READ;
	size_t ws[WORDS_MAX], wl[WORDS_MAX], nw = 0, i = 0;
	char stem[IDP_SCOPE_MAX_LEN + 1], joined[IDP_SCOPE_MAX_LEN + 1];

	while (verb[i] != '\0' && nw < WORDS_MAX) {
		while (word_sep(verb[i]))
			i++;
		if (verb[i] == '\0')
			break;
		ws[nw] = i++;
		while (verb[i] != '\0' && !word_sep(verb[i]) && !word_starts(verb, i))
			i++;
		wl[nw] = i - ws[nw];
		nw++;
	}
	for (size_t k = 0; k < m->n; k++) {
		size_t n = entry_stem(&m->entries[k], best, stem, sizeof(stem));
		bool hit = false;

		if (n == 0)
			continue;
		/* Whole words in a row. */
		for (size_t a = 0; a < nw && !hit; a++) {
			size_t len = 0;

			for (size_t b = a; b < nw && len < n; b++) {
				for (size_t c = 0; c < wl[b]; c++)
					joined[len++] =
					    (char)tolower((unsigned char)verb[ws[b] + c]);
				hit = len == n && memcmp(joined, stem, n) == 0;
			}
		}
		/* Inside a run of capitals (and the lower case letters after it). */
		for (size_t p = 0; verb[p] != '\0' && !hit && n >= 3; p++) {
			size_t run = 0, tail = 0;

			if (!is_upper(verb[p]) || (p > 0 && is_upper(verb[p - 1])))
				continue;
			while (is_upper(verb[p + run]))
				run++;
			while (is_alpha(verb[p + run + tail]))
				tail++;
			for (size_t o = 0; run >= 2 && o < run && !hit; o++)
				hit =
				    o + n <= run + tail && strncasecmp(verb + p + o, stem, n) == 0;
		}
		if (hit)
			best = m->entries[k].cls;
	}
	return best;
}

/* The highest class of the map: what a verb with a '*' inside it could be. */
static enum idp_action_class
map_top(const struct scope_verb_map *m)
{
	enum idp_action_class top = IDP_ACTION_WRITE;

	for (size_t k = 0; k < m->n; k++)
		if (m->entries[k].cls > top)
			top = m->entries[k].cls;
	return top;
}

/*
 * The classes a trailing '*' reaches beyond what the verb's whole words
 * say, as a mask; 0 when verb does not end in '*'.  The star may finish
 * the last word, so a fragment that begins an entry's stem takes that
 * entry's class ("Del" of "ListAndDel*", "Adm" of "GetAdm*", "Cre" of
 * "GetOrCre*", "DE" of "GetDE*"), from any word start and, inside a run
 * of capitals, from any offset leaving two letters or more.  After a
 * separator ("Get_*", "instances.*") the star may be any words at all:
 * every class of the map.  A star right after a whole word keeps that
 * word's class ("Describe*" is read): the documented prefix convention.
 */
static unsigned
trailing_classes(const struct scope_verb_map *m, const char *verb)
{
	size_t end = strlen(verb);
	char stem[IDP_SCOPE_MAX_LEN + 1], frag[IDP_SCOPE_MAX_LEN + 1];
	unsigned mask = 0;

	if (end < 2 || verb[end - 1] != '*')
		return 0;
	end--;
	if (word_sep(verb[end - 1])) {
		mask = 1u << IDP_ACTION_WRITE;
		for (size_t k = 0; k < m->n; k++)
			mask |= 1u << m->entries[k].cls;
		return mask;
	}
	for (size_t s = 0; s < end; s++) {
		size_t fl = 0;

		if (word_sep(verb[s]))
			continue;
		if (!(s == 0 || word_sep(verb[s - 1]) || word_starts(verb, s) ||
		      (is_upper(verb[s]) && is_upper(verb[s - 1]) && end - s >= 2)))
			continue;
		for (size_t i = s; i < end; i++)
			if (!word_sep(verb[i]))
				frag[fl++] = (char)tolower((unsigned char)verb[i]);
		for (size_t k = 0; k < m->n; k++) {
			size_t n = entry_stem(&m->entries[k], IDP_ACTION_READ, stem, sizeof(stem));

			if (n > fl && memcmp(frag, stem, fl) == 0)
				mask |= 1u << m->entries[k].cls;
		}
	}
	return mask;
}

/* The highest class in a non-empty mask of classes. */
static enum idp_action_class
mask_top(unsigned mask)
{
	enum idp_action_class top = IDP_ACTION_READ;

	for (int c = 0; c < IDP_ACTION_COUNT; c++)
		if (mask & (1u << c))
			top = (enum idp_action_class)c;
	return top;
}

/*
 * Whether an entry that is not a prefix pattern covers verb: an exact name
 * ("DescribeUpdateActions") or a suffix or inner pattern ("*\/read",
 * "compute.*.get").  Such an entry is the deployment's own word on what
 * the verb does, over the guesses from words and inner wildcards.
 */
static bool
named_by_entry(const struct scope_verb_map *m, const char *verb)
{
	for (size_t k = 0; k < m->n; k++) {
		const char *v = m->entries[k].verb, *star = strchr(v, '*');

		if (star != NULL && star[1] == '\0' && strchr(v, '*') == star)
			continue; /* "Stem*": a prefix, subject to the words after it */
		if (scope_glob_match(v, verb))
			return true;
	}
	return false;
}

enum idp_action_class
scope_verb_class(const struct scope_verb_map *m, const char *verb)
{
	enum idp_action_class best = IDP_ACTION_READ;
	bool covered = false;
	char folded[IDP_SCOPE_MAX_LEN + 1], entry[IDP_SCOPE_MAX_LEN + 1];

	if (verb_validate(verb) != IDP_OK)
		return IDP_ACTION_ADMIN;
	fold(verb, folded);
	for (size_t i = 0; i < m->n; i++) {
		const struct verb_entry *e = &m->entries[i];

		/*
		 * Case only ever raises a class: a resource server may read
		 * "terminateinstances" as TerminateInstances (AWS IAM's
		 * actions ignore case), so folded, the verb takes the class of
		 * every entry it could then match.  But what covers a verb,
		 * and so lets it be read, is decided case for case: folded,
		 * "readwrite" would be covered by "Read*".
		 */
		fold(e->verb, entry);
		if (!scope_glob_overlap(folded, entry))
			continue;
		if (e->cls > best)
			best = e->cls;
		/* verb as literal text against the entry: containment (see top). */
		if (scope_glob_match(e->verb, verb))
			covered = true;
	}
	if (!covered && best < IDP_ACTION_WRITE)
		best = IDP_ACTION_WRITE;
	if (named_by_entry(m, verb))
		return best;
	/*
	 * A '*' before the end stands for anything in the middle of a verb,
	 * words that write or delete included ("Describe*Terminate*"): the
	 * highest class there is.  A trailing one extends the last word only
	 * (trailing_classes), and a prefix pattern keeps its prefix's class
	 * ("Describe*" is read).
	 */
	{
		const char *star = strchr(verb, '*');

		if (star != NULL && star[1] != '\0') {
			enum idp_action_class top = map_top(m);

			return top > best ? top : best;
		}
	}
	{
		enum idp_action_class w = word_class(m, verb);
		unsigned t = trailing_classes(m, verb);

		if (w > best)
			best = w;
		if (t != 0 && mask_top(t) > best)
			best = mask_top(t);
	}
	return best;
}

enum idp_action_class
scope_action_class(const struct scope_verb_map *m, const char *scope)
{
	if (scope_validate(scope, NULL) != IDP_OK)
		return IDP_ACTION_ADMIN;
	return scope_verb_class(m, strchr(scope, ':') + 1);
}

unsigned
scope_verb_classes(const struct scope_verb_map *m, const char *verb)
{
	char folded[IDP_SCOPE_MAX_LEN + 1], entry[IDP_SCOPE_MAX_LEN + 1];
	const char *star;
	bool covered = false;
	unsigned mask;

	if (verb_validate(verb) != IDP_OK)
		return IDP_ACTION_MASK_ALL;
	mask = 1u << scope_verb_class(m, verb);
	star = strchr(verb, '*');
	if (star == NULL)
		return mask;
	/* Every entry it overlaps, case folded as scope_verb_class folds. */
	fold(verb, folded);
	for (size_t i = 0; i < m->n; i++) {
		const struct verb_entry *e = &m->entries[i];

		fold(e->verb, entry);
		if (scope_glob_overlap(folded, entry))
			mask |= 1u << e->cls;
		if (scope_glob_match(e->verb, verb))
			covered = true;
	}
	/* Not within one entry: it can match a verb no entry names, a write. */
	if (!covered)
		mask |= 1u << IDP_ACTION_WRITE;
	/* A '*' before the end stands for words of any class (scope_verb_class). */
	if (star[1] != '\0' && !named_by_entry(m, verb)) {
		for (size_t i = 0; i < m->n; i++)
			mask |= 1u << m->entries[i].cls;
	}
	/* A trailing '*' after a separator or inside a word (scope_verb_class). */
	if (!named_by_entry(m, verb))
		mask |= trailing_classes(m, verb);
	return mask;
}

unsigned
scope_action_classes(const struct scope_verb_map *m, const char *scope)
{
	if (scope_validate(scope, NULL) != IDP_OK)
		return IDP_ACTION_MASK_ALL;
	return scope_verb_classes(m, strchr(scope, ':') + 1);
}
