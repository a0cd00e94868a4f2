/*
 * policy.h - idpd's policy engine: a small rule language compiled into an
 * immutable, reference-counted policy set and evaluated without allocating.
 *
 * The module owns: the compiled sets (policy_set), the holder that swaps them
 * atomically (policy_engine), the typed evaluation input (policy_input), the
 * decision (policy_decision, caller storage), and the context providers that
 * fill the input's context.* attributes (time zone, call counters, risk
 * baseline).  The language is described in docs/policy-language.md.
 *
 * Threads: a policy_set is immutable; any thread may evaluate it while it
 * holds a reference.  policy_engine_acquire() and policy_engine_swap() may be
 * called from any thread.  Context providers lock internally (see below).
 */
#ifndef IDPD_POLICY_H
#define IDPD_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "idpd/clock.h"
#include "idpd/common.h"
#include "idpd/scope.h"

/* ---- limits ------------------------------------------------------------- */

#define POLICY_MAX_FILE_BYTES (1024 * 1024)
#define POLICY_MAX_FILES 256
#define POLICY_MAX_RULES 10000 /* per set */
#define POLICY_MAX_MATCHES 64  /* rules listed in one decision */
#define POLICY_MAX_GRANTED 64  /* scopes in a narrowed grant */
#define POLICY_MAX_ERRORS 100  /* errors shown per load; the rest are counted */

/* ---- effects and decisions ---------------------------------------------- */

/* In increasing precedence: a deny beats everything. */
enum policy_effect {
	POLICY_ALLOW = 0,
	POLICY_ALLOW_WITH_CONDITIONS = 1,
	POLICY_REQUIRE_APPROVAL = 2,
	POLICY_DENY = 3,
};

/* "ALLOW", "ALLOW_WITH_CONDITIONS", "REQUIRE_APPROVAL", "DENY". */
const char *policy_effect_name(enum policy_effect e);
/* The effect for one of those names, or -1. */
int policy_effect_parse(const char *s);

struct policy_rule; /* a compiled rule, owned by its set */

const char *policy_rule_id(const struct policy_rule *r);
const char *policy_rule_reason(const struct policy_rule *r);
enum policy_effect policy_rule_effect(const struct policy_rule *r);

/* One rule that matched, or that could not be evaluated. */
struct policy_match {
	const struct policy_rule *rule;
	/*
	 * NULL when the condition held.  Otherwise why it could not be
	 * evaluated ("agent.environment is missing"): a deny or
	 * require_approval rule then counts as matched (applied is true), an
	 * allow rule as not matched (applied is false), and an
	 * allow_with_conditions rule grants nothing but its conditions restrict
	 * another rule's grant (applied is true exactly when the decision is
	 * ALLOW_WITH_CONDITIONS).
	 */
	const char *error;
	bool applied;
};

/*
 * The result of one evaluation, in caller storage (about 2 KiB; fine on a
 * worker's stack).  Every pointer in it points into the policy set or into
 * the input, so it is valid while the caller holds both.
 */
struct policy_decision {
	enum policy_effect effect;
	const char *reason; /* of the first deciding rule, or "no rule allows" */
	struct policy_match matches[POLICY_MAX_MATCHES];
	size_t n_matches;
	size_t n_matches_total; /* > n_matches when the list was cut short */

	/* Conditions combined over every applied allow_with_conditions rule. */
	struct {
		bool has_max_ttl;
		int64_t max_ttl;       /* seconds; the smallest of all */
		bool enhanced_logging; /* the OR of all */
		/*
		 * narrowed: some rule limits the scopes.  scopes then holds the
		 * requested scopes intersected with every rule's scope set
		 * (a requested pattern wider than an allowed one is replaced
		 * by the allowed one).  An empty intersection turns the
		 * decision into DENY.
		 */
		bool narrowed;
		const char *scopes[POLICY_MAX_GRANTED];
		size_t n_scopes;
	} cond;

	size_t n_evaluated; /* rules whose condition was evaluated */
};

/* ---- input -------------------------------------------------------------- */

/* Every attribute a rule may read; the language names are in policy_attr_name(). */
enum policy_attr {
	POLICY_ATTR_AGENT_ID,
	POLICY_ATTR_AGENT_TYPE,
	POLICY_ATTR_AGENT_VERSION,
	POLICY_ATTR_AGENT_MODEL,
	POLICY_ATTR_AGENT_DEPLOYMENT,
	POLICY_ATTR_AGENT_OWNER,
	POLICY_ATTR_AGENT_TEAM,
	POLICY_ATTR_AGENT_STATUS,
	POLICY_ATTR_AGENT_ENVIRONMENT,
	POLICY_ATTR_AGENT_CAPABILITIES,    /* list of scope patterns */
	POLICY_ATTR_AGENT_DELEGATE_TO,     /* list */
	POLICY_ATTR_AGENT_DOMAINS,         /* list */
	POLICY_ATTR_AGENT_APPROVAL_FOR,    /* requires_human_approval_for: list */
	POLICY_ATTR_AGENT_MAX_CHAIN_DEPTH, /* int */
	POLICY_ATTR_AGENT_LABELS,          /* map */
	POLICY_ATTR_REQUEST_SCOPES,        /* list of scope patterns */
	POLICY_ATTR_REQUEST_ACTION_CLASS,  /* enum idp_action_class */
	POLICY_ATTR_REQUEST_AUDIENCE,
	POLICY_ATTR_REQUEST_TTL, /* int, seconds */
	POLICY_ATTR_REQUEST_TASK_ID,
	POLICY_ATTR_REQUEST_HUMAN,
	POLICY_ATTR_RESOURCE_AUDIENCE,
	POLICY_ATTR_RESOURCE_DOMAIN,
	POLICY_ATTR_RESOURCE_CLASSIFICATION,
	POLICY_ATTR_RESOURCE_ENVIRONMENT,
	POLICY_ATTR_RESOURCE_LABELS,      /* map */
	POLICY_ATTR_DELEGATION_DEPTH,     /* int; 0 for a direct request */
	POLICY_ATTR_DELEGATION_CHAIN,     /* list of agent ids, root first */
	POLICY_ATTR_DELEGATION_APPROVALS, /* int: links approved by a human */
	POLICY_ATTR_CONTEXT_HOUR,         /* int 0..23, configured time zone */
	POLICY_ATTR_CONTEXT_MINUTE,       /* int 0..59 */
	POLICY_ATTR_CONTEXT_WEEKDAY,      /* int 0 = Monday .. 6 = Sunday */
	POLICY_ATTR_CONTEXT_CALLS,        /* calls_last_minute: int */
	POLICY_ATTR_CONTEXT_RISK,         /* int 0..100 */
	POLICY_ATTR_CONTEXT_APPROVAL,     /* bool: an approval was presented */
	POLICY_ATTR_COUNT
};

enum policy_type {
	POLICY_T_STRING,
	POLICY_T_INT,
	POLICY_T_BOOL,
	POLICY_T_ACTION, /* an action class; ordered */
	POLICY_T_WEEKDAY,
	POLICY_T_LIST, /* list of strings */
	POLICY_T_MAP,  /* string -> string */
};

/* "agent.id", ...; NULL for an out-of-range attr. */
const char *policy_attr_name(enum policy_attr a);
enum policy_type policy_attr_type(enum policy_attr a);
/* The attribute called name ("agent.id"), or -1. */
int policy_attr_lookup(const char *name);

/* "mon".."sun" <-> 0..6. */
const char *policy_weekday_name(int wd);
int policy_weekday_parse(const char *s);

struct policy_kv {
	const char *key;
	const char *value;
};

union policy_slot {
	const char *s;
	int64_t i; /* ints, bools (0/1), action classes, weekdays */
	struct {
		const char *const *v;
		size_t n;
	} list;
	struct {
		const struct policy_kv *kv;
		size_t n;
	} map;
};

/*
 * The typed input of one evaluation, built once per request.  It borrows
 * every string and array it points to; they must outlive the evaluation.
 * An attribute not set is missing, and rules that read it fail closed.
 */
struct policy_input {
	uint64_t present; /* bit a set: slot[a] holds a value */
	union policy_slot slot[POLICY_ATTR_COUNT];
};

void policy_input_init(struct policy_input *in);
/*
 * Setters.  A setter whose value type does not fit the attribute leaves it
 * missing (so the mistake fails closed) and returns IDP_EINVAL.
 */
int policy_input_set_str(struct policy_input *in, enum policy_attr a, const char *s);
int policy_input_set_int(struct policy_input *in, enum policy_attr a, int64_t v);
int policy_input_set_bool(struct policy_input *in, enum policy_attr a, bool v);
int policy_input_set_list(struct policy_input *in, enum policy_attr a, const char *const *v,
                          size_t n);
int policy_input_set_map(struct policy_input *in, enum policy_attr a, const struct policy_kv *kv,
                         size_t n);
void policy_input_unset(struct policy_input *in, enum policy_attr a);
static inline bool
policy_input_has(const struct policy_input *in, enum policy_attr a)
{
	return (in->present >> a) & 1u;
}

/*
 * Options for building an input from JSON.  verbs derives
 * request.action_class from request.scopes when the JSON has none (NULL:
 * scope_verb_map_current); tz converts context.time (NULL: UTC); lenient
 * ignores unknown keys instead of refusing them.
 */
struct policy_tz;
struct policy_json_opts {
	const struct scope_verb_map *verbs;
	const struct policy_tz *tz;
	bool lenient;
};

/*
 * Check an input built with the setters against the limits the JSON reader
 * enforces (string and list lengths, integer ranges, scope syntax in
 * agent.capabilities and request.scopes), so both ways of building an input
 * accept the same values.  IDP_EINVAL with one diag line per problem.  Any
 * thread.
 */
int policy_input_validate(const struct policy_input *in, struct idp_diag *diag) IDP_WUR;
/*
 * Raise request.action_class to what request.scopes imply (derived when
 * unset), as the JSON reader does; verbs NULL means the current map (scope_verb_map_current).
 */
void policy_input_derive_action_class(struct policy_input *in, const struct scope_verb_map *verbs);

/* An input built from JSON; owns the arrays it needs and a reference to the JSON. */
struct policy_input_doc;

/*
 * Build an input from a JSON object {"agent": {...}, "request": {...},
 * "resource": {...}, "delegation": {...}, "context": {...}}, the shape in
 * docs/policy-language.md.  On success *out is a new document (free with
 * policy_input_doc_free) that holds a reference to obj.  On failure *out is
 * NULL and diag holds one line per problem ("agent.capabilities: expected a
 * list of strings").  Any thread.
 */
int policy_input_from_json(const json_t *obj, const struct policy_json_opts *opts,
                           struct policy_input_doc **out, struct idp_diag *diag) IDP_WUR;
/* The input inside doc; valid until the doc is freed.  Context providers may add to it. */
struct policy_input *policy_input_doc_input(struct policy_input_doc *doc);
void policy_input_doc_free(struct policy_input_doc *doc);

/* ---- policy sets -------------------------------------------------------- */

struct policy_set;

/* One source text; name is used in messages ("policies/base.policy"). */
struct policy_source {
	const char *name;
	const char *text;
	size_t len;
};

/*
 * Parse, check and compile sources into a new set with one reference.  On
 * failure *out is NULL and diag holds every error, each as
 * "file:line:column: message" followed by the source line and a "^^^"
 * underline; the sources are refused whole.  clock stamps the load time
 * (NULL: the system clock).  Touches no global state; any thread.
 */
int policy_set_compile(const struct policy_source *src, size_t n, const struct idp_clock *clock,
                       struct policy_set **out, struct idp_diag *diag) IDP_WUR;

/*
 * Load every "*.policy" file of dir (not recursing; in name order) and
 * compile them as one set.  Same contract as policy_set_compile; file
 * errors are reported as "dir/file: message".  An empty directory is an
 * error: a set that can only deny is almost certainly a mistake.
 */
int policy_set_load_dir(const char *dir, const struct idp_clock *clock, struct policy_set **out,
                        struct idp_diag *diag) IDP_WUR;

struct policy_set *policy_set_ref(struct policy_set *set);
/* Drop a reference; the last one frees the set.  NULL is a no-op. */
void policy_set_unref(struct policy_set *set);

/* "sha256:<hex>" over the file names and texts, in name order. */
const char *policy_set_hash(const struct policy_set *set);
int64_t policy_set_loaded_at_ms(const struct policy_set *set);
size_t policy_set_rule_count(const struct policy_set *set);
const struct policy_rule *policy_set_rule(const struct policy_set *set, size_t i);
/* The rule with this id, or NULL. */
const struct policy_rule *policy_set_find(const struct policy_set *set, const char *id);

/*
 * The set as JSON for GET /v1/policies: {"hash", "loaded_at", "rules":
 * [{"id", "effect", "reason", "file", "line"}...]}.  Never fails.
 */
json_t *policy_set_describe(const struct policy_set *set);

/* ---- evaluation --------------------------------------------------------- */

/*
 * Evaluate in against set into *out.  Cannot fail and allocates nothing;
 * missing attributes follow the fail-closed rule (see struct policy_match).
 * Any thread, as long as it holds a reference to set.
 */
void policy_eval(const struct policy_set *set, const struct policy_input *in,
                 struct policy_decision *out);

/*
 * The decision as JSON: {"decision", "reason", "rules": [ids applied],
 * "matches": [{"id", "effect", "reason", "error"?}...], "conditions":
 * {"max_ttl"?, "scopes"?, "enhanced_logging"}?}.  "conditions" is present
 * only for ALLOW_WITH_CONDITIONS.  Never fails.
 */
json_t *policy_decision_json(const struct policy_decision *d);

/* ---- the current set, swapped atomically -------------------------------- */

struct policy_engine;

struct policy_engine *policy_engine_new(void);
/* Drops the engine's reference to its set; readers keep theirs.  NULL is a no-op. */
void policy_engine_free(struct policy_engine *e);

/*
 * The current set with a new reference the caller must drop with
 * policy_set_unref(), or NULL before the first swap.  A short mutex covers
 * only the pointer read and the reference increment, so a reload never
 * waits for evaluations and an evaluation finishes on the set it acquired.
 */
struct policy_set *policy_engine_acquire(struct policy_engine *e);

/* Install set (takes the caller's reference) and drop the old one. */
void policy_engine_swap(struct policy_engine *e, struct policy_set *set);

/*
 * Load dir and, only if it compiles, swap it in.  On failure the old set
 * stays in force and diag says why.  Any thread; concurrent reloads are
 * serialised.
 */
int policy_engine_reload(struct policy_engine *e, const char *dir, const struct idp_clock *clock,
                         struct idp_diag *diag) IDP_WUR;

/* ---- context providers -------------------------------------------------- */

/*
 * A time zone read from the compiled tz database (TZif files under
 * /usr/share/zoneinfo, or the directory in zoneinfo_dir), converted by this
 * module's own code: no TZ variable, no localtime_r, no global state.
 * Immutable once loaded.
 */
struct policy_localtime {
	int year, month, day; /* month 1..12 */
	int hour, minute, second;
	int weekday;        /* 0 = Monday */
	int32_t utc_offset; /* seconds east of UTC */
};

/* "UTC" needs no file.  zoneinfo_dir NULL means /usr/share/zoneinfo. */
int policy_tz_load(const char *name, const char *zoneinfo_dir, struct policy_tz **out,
                   struct idp_diag *diag) IDP_WUR;
/* A zone with a fixed offset (seconds east of UTC), for tests and for "UTC". */
struct policy_tz *policy_tz_fixed(const char *name, int32_t offset);
void policy_tz_free(struct policy_tz *tz);
const char *policy_tz_name(const struct policy_tz *tz);
/* Local civil time at ms since the epoch.  Never fails; any thread. */
void policy_tz_local(const struct policy_tz *tz, int64_t ms, struct policy_localtime *out);

/*
 * Per-agent, per-resource call counters over a sliding minute (one-second
 * buckets).  A fixed table of capacity entries (rounded up to a power of two,
 * at least 64), split into stripes with a lock each; an entry with no call
 * in the last minute is free for reuse.  An entry with calls in it is never
 * evicted: when a new key finds no free slot in its probe window, its count
 * is POLICY_COUNT_UNKNOWN (the attribute is then left missing, and a rule
 * on it fails closed) rather than a fresh zero.  Keys are keyed hashes of
 * (agent, resource), so memory does not depend on id lengths.  now_ms need
 * only be monotonic.
 */
struct policy_counters;

#define POLICY_COUNT_UNKNOWN UINT32_MAX

struct policy_counters *policy_counters_new(size_t capacity);
void policy_counters_free(struct policy_counters *c);
/* Count one call at now_ms; returns the calls in the last 60 s, this one
 * included, or POLICY_COUNT_UNKNOWN (no slot: the call is not counted). */
uint32_t policy_counters_hit(struct policy_counters *c, const char *agent, const char *resource,
                             int64_t now_ms);
/* The calls in the last 60 s, without counting one, or POLICY_COUNT_UNKNOWN. */
uint32_t policy_counters_get(struct policy_counters *c, const char *agent, const char *resource,
                             int64_t now_ms);
/* Entries active within the last minute (for tests and metrics). */
size_t policy_counters_live(struct policy_counters *c, int64_t now_ms);

/*
 * The risk score, 0..100, from an agent's behavioural baseline.  The formula
 * (docs/policy-language.md, "Risk score"):
 *   rate     = 0 if calls <= 2 * avg, else min(40, 40 * (log2(calls / avg) - 1) / 3),
 *              avg = max(1, the agent's moving average of calls per minute),
 *              0 while the baseline has seen fewer than 5 minutes
 *   novelty  = 20 if a requested scope is new to the agent, + 15 if the audience is
 *   denials  = 10 per denial in the last 15 minutes, at most 30
 *   hours    = 15 outside business hours
 *   score    = min(100, rate + novelty + denials + hours)
 */
struct policy_risk_factors {
	uint32_t calls_this_minute;
	double avg_per_minute;
	uint32_t minutes_observed;
	bool new_scope;
	bool new_audience;
	uint32_t recent_denials;
	bool off_hours;
};
struct policy_risk_breakdown {
	int rate, novelty, denials, hours, score;
};
/* The formula alone; pure. */
void policy_risk_compute(const struct policy_risk_factors *f, struct policy_risk_breakdown *out);

/*
 * Business hours for the off-hours factor: days is a bit set (bit 0 =
 * Monday), from/to are minutes since midnight, from < to.
 */
struct policy_hours {
	uint8_t days;
	uint16_t from, to;
};

/*
 * The per-agent baselines: a bounded table like the counters (capacity
 * agents, stale ones evicted first), each agent with its minute rate and
 * moving average, the hashes of the last 32 scopes/audiences it used, and its
 * last 8 denials.  tz and hours decide "off hours"; tz is borrowed.
 */
struct policy_baseline;

struct policy_baseline *policy_baseline_new(size_t capacity, const struct policy_tz *tz,
                                            const struct policy_hours *hours);
void policy_baseline_free(struct policy_baseline *b);
/* The score for a request now, without recording it; any thread. */
int policy_baseline_score(struct policy_baseline *b, const char *agent, const char *const *scopes,
                          size_t n_scopes, const char *audience, int64_t now_ms,
                          struct policy_risk_breakdown *out);
/* Record a request and its outcome into the baseline; any thread. */
void policy_baseline_record(struct policy_baseline *b, const char *agent, const char *const *scopes,
                            size_t n_scopes, const char *audience, bool denied, int64_t now_ms);

/*
 * The context for one request: fills context.hour, .minute, .weekday from
 * clock and tz, context.calls_last_minute from counters (counting this call)
 * and context.risk from baseline, each only when its provider is non-NULL
 * and the attributes it needs (agent.id, request.audience / resource.audience)
 * are present.  Reads in for the agent, scopes and audience.
 */
struct policy_context {
	const struct idp_clock *clock;
	const struct policy_tz *tz;
	struct policy_counters *counters;
	struct policy_baseline *baseline;
};
void policy_context_fill(const struct policy_context *ctx, struct policy_input *in);

/* ---- tooling -------------------------------------------------------------- */

/*
 * `idpd policy check DIR` and `idpd policy test DIR [--time-zone NAME]`;
 * argv[0] is "policy".  Returns the process exit code; prints to stdout and
 * stderr.
 */
int policy_cli_main(int argc, char **argv);

#endif /* IDPD_POLICY_H */
