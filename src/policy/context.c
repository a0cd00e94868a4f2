/*
 * context.c - what fills the input's context.* attributes: local time in the
 * configured zone, per-agent call counters, and the risk baseline.
 *
 * Time zones are read from the compiled tz database (RFC 8536 TZif files,
 * version 2 or later) and converted here: the 64-bit transition table, then
 * the footer's POSIX TZ rule for instants past the last transition.  No TZ
 * variable and no localtime_r, so a threaded daemon never touches libc's
 * global zone state.  Leap seconds are ignored, as POSIX time does.
 *
 * The counters and the baseline are fixed-size tables split into stripes,
 * each with its own mutex; a lookup touches one stripe and a window of
 * POLICY_PROBE slots in it, so memory is bounded and lock hold times short.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "policy_int.h"

/* ---- civil time ------------------------------------------------------------ */

static int64_t
floor_div(int64_t a, int64_t b)
{
	return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

int64_t
policy_days_from_civil(int64_t y, unsigned m, unsigned d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = floor_div(y, 400);
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static void
civil_from_days(int64_t z, int *y, int *m, int *d)
{
	int64_t era, doe, yoe, doy, mp;

	z += 719468;
	era = floor_div(z, 146097);
	doe = z - era * 146097;
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	*d = (int)(doy - (153 * mp + 2) / 5 + 1);
	*m = (int)(mp < 10 ? mp + 3 : mp - 9);
	*y = (int)(yoe + era * 400 + (*m <= 2));
}

static bool
is_leap(int64_t y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int
month_days(int64_t y, unsigned m)
{
	static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

	return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

static int
digits(const char *s, int n)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

int
policy_parse_rfc3339(const char *s, int64_t *ms)
{
	int y, mo, d, h, mi, sec, frac = 0, off = 0;
	const char *p;
	size_t len = strlen(s);

	if (len < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') ||
	    s[13] != ':' || s[16] != ':')
		return IDP_EINVAL;
	y = digits(s, 4);
	mo = digits(s + 5, 2);
	d = digits(s + 8, 2);
	h = digits(s + 11, 2);
	mi = digits(s + 14, 2);
	sec = digits(s + 17, 2);
	if (y < 0 || mo < 1 || mo > 12 || d < 1 || d > month_days(y, (unsigned)mo) || h < 0 ||
	    h > 23 || mi < 0 || mi > 59 || sec < 0 || sec > 60)
		return IDP_EINVAL;
	p = s + 19;
	if (*p == '.') {
		int n = 0;

		p++;
		while (*p >= '0' && *p <= '9') {
			if (n < 3)
				frac = frac * 10 + (*p - '0');
			n++;
			p++;
		}
		if (n == 0 || n > 9)
			return IDP_EINVAL;
		for (; n < 3; n++)
			frac *= 10;
	}
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[3] == ':') {
		int oh = digits(p + 1, 2), om = digits(p + 4, 2);

		if (oh < 0 || oh > 23 || om < 0 || om > 59)
			return IDP_EINVAL;
		off = (oh * 60 + om) * 60 * (*p == '-' ? -1 : 1);
		p += 6;
	} else {
		return IDP_EINVAL;
	}
	if (*p != '\0')
		return IDP_EINVAL;
	*ms = ((policy_days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 +
	        (sec > 59 ? 59 : sec)) -
	       off) *
	          1000 +
	      frac;
	return IDP_OK;
}

uint8_t
policy_parse_days(const char *s)
{
	uint8_t mask = 0;
	char item[16];

	if (*s == '\0' || strlen(s) > 64)
		return 0;
	while (*s != '\0') {
		const char *end = strchr(s, ',');
		size_t n = end ? (size_t)(end - s) : strlen(s);
		const char *dash;
		int a, b;

		if (n == 0 || n >= sizeof(item))
			return 0;
		memcpy(item, s, n);
		item[n] = '\0';
		dash = strchr(item, '-');
		if (dash == NULL) {
			a = b = policy_weekday_parse(item);
		} else {
			item[dash - item] = '\0';
			a = policy_weekday_parse(item);
			b = policy_weekday_parse(dash + 1);
		}
		if (a < 0 || b < 0)
			return 0;
		/* A range may wrap: "fri-mon" is fri, sat, sun, mon. */
		for (int d = a;; d = (d + 1) % 7) {
			mask |= (uint8_t)(1u << d);
			if (d == b)
				break;
		}
		s += n;
		if (*s == ',') {
			s++;
			if (*s == '\0')
				return 0;
		}
	}
	return mask;
}

int
policy_parse_hhmm(const char *s, bool allow_24)
{
	int h, m;

	if (strlen(s) != 5 || s[2] != ':')
		return -1;
	h = digits(s, 2);
	m = digits(s + 3, 2);
	if (h < 0 || m < 0 || m > 59)
		return -1;
	if (h == 24 && m == 0 && allow_24)
		return 24 * 60;
	if (h > 23)
		return -1;
	return h * 60 + m;
}

/* ---- time zones -------------------------------------------------------------- */

/* One date of a POSIX TZ rule: Jn, n or Mm.w.d, and the local time of day. */
struct tz_date {
	char kind; /* 'J', 'n', 'M' */
	int a, b, c;
	int32_t time; /* seconds after local midnight, may be negative or > 24 h */
};

struct tz_rule {
	bool has_dst;
	int32_t std_off, dst_off; /* seconds east of UTC */
	struct tz_date start, end;
};

struct policy_tz {
	char *name;
	size_t n; /* transitions */
	int64_t *times;
	int32_t *offs;  /* offset in force from times[i] */
	int32_t before; /* offset before the first transition */
	bool has_rule;
	struct tz_rule rule;
};

struct policy_tz *
policy_tz_fixed(const char *name, int32_t offset)
{
	struct policy_tz *tz = idp_xcalloc(1, sizeof(*tz));

	tz->name = idp_xstrdup(name);
	tz->before = offset;
	return tz;
}

void
policy_tz_free(struct policy_tz *tz)
{
	if (tz == NULL)
		return;
	free(tz->name);
	free(tz->times);
	free(tz->offs);
	free(tz);
}

const char *
policy_tz_name(const struct policy_tz *tz)
{
	return tz->name;
}

static uint32_t
be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t
be64(const unsigned char *p)
{
	return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

/* POSIX offset "[+-]hh[:mm[:ss]]"; *sign_west turns it into seconds east. */
static const char *
tz_offset(const char *p, int32_t *out, bool west_positive)
{
	int sign = 1, v[3] = {0, 0, 0};

	if (*p == '+' || *p == '-')
		sign = *p++ == '-' ? -1 : 1;
	for (int i = 0; i < 3; i++) {
		int n = 0;

		if (*p < '0' || *p > '9')
			return i == 0 ? NULL : p;
		while (*p >= '0' && *p <= '9' && n < 3) {
			v[i] = v[i] * 10 + (*p++ - '0');
			n++;
		}
		if (i < 2 && *p == ':')
			p++;
		else
			break;
	}
	if (v[0] > 167 || v[1] > 59 || v[2] > 59)
		return NULL;
	*out = sign * (v[0] * 3600 + v[1] * 60 + v[2]) * (west_positive ? -1 : 1);
	return p;
}

static const char *
tz_abbr(const char *p)
{
	if (*p == '<') {
		while (*p != '\0' && *p != '>')
			p++;
		return *p == '>' ? p + 1 : NULL;
	}
	{
		const char *s = p;

		while ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z'))
			p++;
		return p - s >= 3 ? p : NULL;
	}
}

static const char *
tz_date(const char *p, struct tz_date *d)
{
	int v[3] = {0, 0, 0};

	d->time = 7200;
	if (*p == 'M') {
		d->kind = 'M';
		p++;
		for (int i = 0; i < 3; i++) {
			if (*p < '0' || *p > '9')
				return NULL;
			while (*p >= '0' && *p <= '9' && v[i] < 100)
				v[i] = v[i] * 10 + (*p++ - '0');
			if (i < 2 && *p++ != '.')
				return NULL;
		}
		if (v[0] < 1 || v[0] > 12 || v[1] < 1 || v[1] > 5 || v[2] > 6)
			return NULL;
	} else {
		d->kind = 'n';
		if (*p == 'J') {
			d->kind = 'J';
			p++;
		}
		if (*p < '0' || *p > '9')
			return NULL;
		while (*p >= '0' && *p <= '9' && v[0] < 1000)
			v[0] = v[0] * 10 + (*p++ - '0');
		if (v[0] > 365 || (d->kind == 'J' && v[0] < 1))
			return NULL;
	}
	d->a = v[0];
	d->b = v[1];
	d->c = v[2];
	if (*p == '/') {
		p = tz_offset(p + 1, &d->time, false);
		if (p == NULL)
			return NULL;
	}
	return p;
}

/* Parse a POSIX TZ string such as "CET-1CEST,M3.5.0,M10.5.0/3". */
static bool
tz_parse_rule(const char *s, struct tz_rule *r)
{
	const char *p = tz_abbr(s);

	memset(r, 0, sizeof(*r));
	if (p == NULL || (p = tz_offset(p, &r->std_off, true)) == NULL)
		return false;
	if (*p == '\0')
		return true;
	p = tz_abbr(p);
	if (p == NULL)
		return false;
	r->has_dst = true;
	r->dst_off = r->std_off + 3600;
	if (*p != ',' && *p != '\0' && (p = tz_offset(p, &r->dst_off, true)) == NULL)
		return false;
	if (*p == '\0') {
		/* No rule: POSIX leaves it to the implementation; use the US one. */
		p = ",M3.2.0,M11.1.0";
	}
	if (*p != ',' || (p = tz_date(p + 1, &r->start)) == NULL || *p != ',' ||
	    (p = tz_date(p + 1, &r->end)) == NULL)
		return false;
	return *p == '\0';
}

/* Days since the epoch of a rule date in year y. */
static int64_t
rule_day(const struct tz_date *d, int64_t y)
{
	int64_t jan1 = policy_days_from_civil(y, 1, 1);

	if (d->kind == 'J')
		return jan1 + d->a - 1 + (is_leap(y) && d->a >= 60);
	if (d->kind == 'n')
		return jan1 + d->a;
	{
		int64_t first = policy_days_from_civil(y, (unsigned)d->a, 1);
		int wd = (int)((first + 4) % 7 + 7) % 7; /* 0 = Sunday; 1970-01-01 was a Thursday */
		int day = 1 + (d->c - wd + 7) % 7 + (d->b - 1) * 7;

		while (day > month_days(y, (unsigned)d->a))
			day -= 7;
		return first + day - 1;
	}
}

static int32_t
rule_offset(const struct tz_rule *r, int64_t t)
{
	int64_t y, start, end;
	int yy, mm, dd;

	if (!r->has_dst)
		return r->std_off;
	civil_from_days(floor_div(t + r->std_off, 86400), &yy, &mm, &dd);
	y = yy;
	start = rule_day(&r->start, y) * 86400 + r->start.time - r->std_off;
	end = rule_day(&r->end, y) * 86400 + r->end.time - r->dst_off;
	if (start < end)
		return t >= start && t < end ? r->dst_off : r->std_off;
	return t >= end && t < start ? r->std_off : r->dst_off; /* southern hemisphere */
}

static int32_t
tz_offset_at(const struct policy_tz *tz, int64_t t)
{
	size_t lo = 0, hi;

	if (tz->n == 0 || t < tz->times[0]) {
		if (tz->n == 0 && tz->has_rule)
			return rule_offset(&tz->rule, t);
		return tz->before;
	}
	if (t >= tz->times[tz->n - 1] && tz->has_rule)
		return rule_offset(&tz->rule, t);
	hi = tz->n;
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;

		if (tz->times[mid] <= t)
			lo = mid;
		else
			hi = mid;
	}
	return tz->offs[lo];
}

void
policy_tz_local(const struct policy_tz *tz, int64_t ms, struct policy_localtime *out)
{
	int64_t t = floor_div(ms, 1000), local, days, secs;
	int32_t off = tz_offset_at(tz, t);

	local = t + off;
	days = floor_div(local, 86400);
	secs = local - days * 86400;
	civil_from_days(days, &out->year, &out->month, &out->day);
	out->hour = (int)(secs / 3600);
	out->minute = (int)(secs / 60 % 60);
	out->second = (int)(secs % 60);
	out->weekday = (int)(((days + 3) % 7 + 7) % 7);
	out->utc_offset = off;
}

#define TZ_MAX_BYTES (512 * 1024)

static bool
tz_name_ok(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > 64 || name[0] == '/' || strstr(name, "..") != NULL)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '/' || c == '_' || c == '-' || c == '+'))
			return false;
	}
	return true;
}

/* Decode a TZif image into tz; false when malformed. */
static bool
tz_decode(struct policy_tz *tz, const unsigned char *b, size_t len)
{
	uint32_t cnt[6];
	size_t v1, off, types_at, need;
	int32_t *type_off = NULL;
	bool ok = false;

	if (len < 44 || memcmp(b, "TZif", 4) != 0 || b[4] < '2')
		return false;
	for (int i = 0; i < 6; i++)
		cnt[i] = be32(b + 20 + 4 * i);
	/* isutcnt isstdcnt leapcnt timecnt typecnt charcnt */
	v1 = 44 + (size_t)cnt[3] * 5 + (size_t)cnt[4] * 6 + cnt[5] + (size_t)cnt[2] * 8 + cnt[1] +
	     cnt[0];
	if (v1 + 44 > len || memcmp(b + v1, "TZif", 4) != 0)
		return false;
	off = v1;
	for (int i = 0; i < 6; i++)
		cnt[i] = be32(b + off + 20 + 4 * i);
	if (cnt[3] > 100000 || cnt[4] == 0 || cnt[4] > 256)
		return false;
	off += 44;
	need = (size_t)cnt[3] * 9 + (size_t)cnt[4] * 6 + cnt[5] + (size_t)cnt[2] * 12 + cnt[1] +
	       cnt[0];
	if (off + need > len)
		return false;
	types_at = off + (size_t)cnt[3] * 9;
	type_off = idp_xcalloc(cnt[4], sizeof(*type_off));
	for (uint32_t i = 0; i < cnt[4]; i++)
		type_off[i] = (int32_t)be32(b + types_at + 6 * i);
	tz->n = cnt[3];
	tz->times = idp_xcalloc(tz->n ? tz->n : 1, sizeof(*tz->times));
	tz->offs = idp_xcalloc(tz->n ? tz->n : 1, sizeof(*tz->offs));
	for (size_t i = 0; i < tz->n; i++) {
		uint8_t idx = b[off + (size_t)cnt[3] * 8 + i];

		if (idx >= cnt[4] || (i > 0 && be64(b + off + 8 * i) <= tz->times[i - 1]))
			goto done;
		tz->times[i] = be64(b + off + 8 * i);
		tz->offs[i] = type_off[idx];
	}
	tz->before = type_off[0];
	off += need;
	/* The footer: "\n<POSIX TZ>\n", possibly empty. */
	if (off < len && b[off] == '\n') {
		const unsigned char *nl = memchr(b + off + 1, '\n', len - off - 1);
		char rule[128];
		size_t rl;

		if (nl == NULL)
			goto done;
		rl = (size_t)(nl - (b + off + 1));
		if (rl >= sizeof(rule))
			goto done;
		memcpy(rule, b + off + 1, rl);
		rule[rl] = '\0';
		if (rl > 0) {
			if (!tz_parse_rule(rule, &tz->rule))
				goto done;
			tz->has_rule = true;
		}
	}
	ok = true;
done:
	free(type_off);
	return ok;
}

int
policy_tz_load(const char *name, const char *zoneinfo_dir, struct policy_tz **out,
               struct idp_diag *diag)
{
	char path[512], ebuf[128];
	unsigned char *buf = NULL;
	struct policy_tz *tz;
	size_t len;
	FILE *f;

	*out = NULL;
	if (strcmp(name, "UTC") == 0 || strcmp(name, "Etc/UTC") == 0) {
		*out = policy_tz_fixed(name, 0);
		return IDP_OK;
	}
	if (!tz_name_ok(name)) {
		idp_diag_add(diag, "time zone \"%.64s\": not a zone name such as \"Europe/Berlin\"",
		             name);
		return IDP_EINVAL;
	}
	snprintf(path, sizeof(path), "%s/%s",
	         zoneinfo_dir != NULL ? zoneinfo_dir : "/usr/share/zoneinfo", name);
	f = fopen(path, "rb");
	if (f == NULL) {
		idp_diag_add(diag, "time zone \"%s\": %s: %s", name, path,
		             idp_strerror(errno, ebuf, sizeof(ebuf)));
		return IDP_ENOTFOUND;
	}
	buf = idp_xmalloc(TZ_MAX_BYTES);
	len = fread(buf, 1, TZ_MAX_BYTES, f);
	fclose(f);
	tz = idp_xcalloc(1, sizeof(*tz));
	tz->name = idp_xstrdup(name);
	if (len == TZ_MAX_BYTES || !tz_decode(tz, buf, len)) {
		idp_diag_add(diag, "time zone \"%s\": %s is not a valid TZif (v2+) file", name,
		             path);
		policy_tz_free(tz);
		free(buf);
		return IDP_EINVAL;
	}
	free(buf);
	*out = tz;
	return IDP_OK;
}

/* ---- keyed hashing (SipHash-2-4) --------------------------------------------- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
	do {                                                                                       \
		v0 += v1;                                                                          \
		v1 = ROTL(v1, 13);                                                                 \
		v1 ^= v0;                                                                          \
		v0 = ROTL(v0, 32);                                                                 \
		v2 += v3;                                                                          \
		v3 = ROTL(v3, 16);                                                                 \
		v3 ^= v2;                                                                          \
		v0 += v3;                                                                          \
		v3 = ROTL(v3, 21);                                                                 \
		v3 ^= v0;                                                                          \
		v2 += v1;                                                                          \
		v1 = ROTL(v1, 17);                                                                 \
		v1 ^= v2;                                                                          \
		v2 = ROTL(v2, 32);                                                                 \
	} while (0)

/* SipHash-2-4 of the byte strings a, then a 0 byte, then b (b may be NULL). */
static uint64_t
siphash2(const uint64_t k[2], const char *a, const char *b)
{
	uint64_t v0 = 0x736f6d6570736575ULL ^ k[0], v1 = 0x646f72616e646f6dULL ^ k[1];
	uint64_t v2 = 0x6c7967656e657261ULL ^ k[0], v3 = 0x7465646279746573ULL ^ k[1];
	uint64_t m = 0, total = 0;
	unsigned fill = 0;
	const char *parts[2] = {a, b};

	for (int part = 0; part < 2; part++) {
		const char *s = parts[part];
		size_t n = s != NULL ? strlen(s) + (part == 0) : 0; /* the separator NUL */

		for (size_t i = 0; i < n; i++) {
			m |= (uint64_t)(unsigned char)s[i] << (8 * fill);
			total++;
			if (++fill == 8) {
				v3 ^= m;
				SIPROUND;
				SIPROUND;
				v0 ^= m;
				m = 0;
				fill = 0;
			}
		}
	}
	m |= total << 56;
	v3 ^= m;
	SIPROUND;
	SIPROUND;
	v0 ^= m;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return (v0 ^ v1 ^ v2 ^ v3) | 1; /* never 0, which marks a free slot */
}

/*
 * The stripe of a key.  Not its low bits: siphash2 sets bit 0 so that no key
 * is 0, and with a power-of-two stripe count only the odd stripes were ever
 * used, half the table, which filled long before it was half full.
 */
static size_t
stripe_of(uint64_t key, size_t nstripes)
{
	return (size_t)((key >> 1) % nstripes);
}

static void
random_key(uint64_t k[2])
{
	if (RAND_bytes((unsigned char *)k, 16) != 1) {
		/* Without entropy the table still works; only collision resistance suffers. */
		k[0] = (uint64_t)idp_mono_us() * 0x9e3779b97f4a7c15ULL;
		k[1] = (uint64_t)(uintptr_t)k ^ 0xa0761d6478bd642fULL;
	}
}

/* ---- striped tables ---------------------------------------------------------- */

#define POLICY_PROBE 8
#define STRIPE_SLOTS 64

struct stripe {
	pthread_mutex_t lock;
	char pad[64 - sizeof(pthread_mutex_t) % 64];
};

/* Capacity rounded up to a power of two, at least one stripe. */
static size_t
table_size(size_t capacity)
{
	size_t n = STRIPE_SLOTS;

	while (n < capacity && n < ((size_t)1 << 30))
		n *= 2;
	return n;
}

/* ---- call counters ----------------------------------------------------------- */

#define WINDOW 60

struct cnt_entry {
	uint64_t key;
	int64_t last_sec;
	uint32_t total;
	uint16_t buckets[WINDOW]; /* calls in second s at s % WINDOW */
};

struct policy_counters {
	size_t size, nstripes;
	struct stripe *stripes;
	struct cnt_entry *e;
	uint64_t key[2];
};

struct policy_counters *
policy_counters_new(size_t capacity)
{
	struct policy_counters *c = idp_xcalloc(1, sizeof(*c));

	c->size = table_size(capacity);
	c->nstripes = c->size / STRIPE_SLOTS;
	c->stripes = idp_xcalloc(c->nstripes, sizeof(*c->stripes));
	c->e = idp_xcalloc(c->size, sizeof(*c->e));
	for (size_t i = 0; i < c->nstripes; i++)
		pthread_mutex_init(&c->stripes[i].lock, NULL);
	random_key(c->key);
	return c;
}

void
policy_counters_free(struct policy_counters *c)
{
	if (c == NULL)
		return;
	for (size_t i = 0; i < c->nstripes; i++)
		pthread_mutex_destroy(&c->stripes[i].lock);
	free(c->stripes);
	free(c->e);
	free(c);
}

/* Move the window of e to now, dropping the seconds that left it. */
static void
cnt_advance(struct cnt_entry *e, int64_t now)
{
	if (now <= e->last_sec)
		return;
	if (now - e->last_sec >= WINDOW) {
		memset(e->buckets, 0, sizeof(e->buckets));
		e->total = 0;
	} else {
		for (int64_t s = e->last_sec + 1; s <= now; s++) {
			e->total -= e->buckets[s % WINDOW];
			e->buckets[s % WINDOW] = 0;
		}
	}
	e->last_sec = now;
}

/* The calls e would hold once moved to now, without moving it. */
static uint32_t
cnt_calls_at(const struct cnt_entry *e, int64_t now)
{
	uint32_t total = e->total;

	if (now <= e->last_sec)
		return total;
	if (now - e->last_sec >= WINDOW)
		return 0;
	for (int64_t s = e->last_sec + 1; s <= now; s++)
		total -= e->buckets[s % WINDOW];
	return total;
}

/*
 * The entry for key in its stripe (locked by the caller), or NULL when absent
 * and !create.  Creating reuses an empty or idle slot of the stripe (no call
 * left in its minute), the one used least recently first.  The whole stripe
 * is searched, not a probe window: with a window of 8, a table 46% full of
 * live keys already left one new key in eleven without a count.  A live
 * entry is never evicted: its count would restart at zero and a volume rule
 * would stop firing for a busy agent, which anyone able to make up keys
 * could arrange.  So when every slot is live, *full is set and the result
 * is NULL, for a lookup as for a creation: the new key's count is unknown,
 * not zero.
 */
static struct cnt_entry *
cnt_find(struct policy_counters *c, size_t base, uint64_t key, int64_t now, bool create, bool *full)
{
	struct cnt_entry *victim = NULL;
	size_t start = (size_t)(key >> 32) % STRIPE_SLOTS;

	*full = false;
	for (size_t i = 0; i < STRIPE_SLOTS; i++) {
		struct cnt_entry *e = &c->e[base + (start + i) % STRIPE_SLOTS];

		if (e->key == key)
			return e;
		if (e->key != 0 && cnt_calls_at(e, now) != 0)
			continue;
		/* Prefer a free slot, then the least recently used idle one. */
		if (victim == NULL ||
		    (victim->key != 0 && (e->key == 0 || e->last_sec < victim->last_sec)))
			victim = e;
	}
	if (victim == NULL) {
		*full = true;
		return NULL;
	}
	if (!create)
		return NULL;
	memset(victim, 0, sizeof(*victim));
	victim->key = key;
	victim->last_sec = now;
	return victim;
}

static uint32_t
cnt_op(struct policy_counters *c, const char *agent, const char *resource, int64_t now_ms, bool hit)
{
	uint64_t key = siphash2(c->key, agent, resource);
	size_t stripe = stripe_of(key, c->nstripes);
	int64_t now = floor_div(now_ms, 1000);
	struct cnt_entry *e;
	uint32_t n = 0;
	bool full;

	pthread_mutex_lock(&c->stripes[stripe].lock);
	e = cnt_find(c, stripe * STRIPE_SLOTS, key, now, hit, &full);
	if (e != NULL) {
		cnt_advance(e, now);
		if (hit) {
			/* A clock that stepped back counts into the newest second. */
			uint16_t *b = &e->buckets[e->last_sec % WINDOW];

			if (*b < UINT16_MAX) {
				(*b)++;
				e->total++;
			}
		}
		n = e->total;
	} else if (full) {
		n = POLICY_COUNT_UNKNOWN;
	}
	pthread_mutex_unlock(&c->stripes[stripe].lock);
	return n;
}

uint32_t
policy_counters_hit(struct policy_counters *c, const char *agent, const char *resource,
                    int64_t now_ms)
{
	return cnt_op(c, agent, resource, now_ms, true);
}

uint32_t
policy_counters_get(struct policy_counters *c, const char *agent, const char *resource,
                    int64_t now_ms)
{
	return cnt_op(c, agent, resource, now_ms, false);
}

size_t
policy_counters_live(struct policy_counters *c, int64_t now_ms)
{
	int64_t now = floor_div(now_ms, 1000);
	size_t n = 0;

	for (size_t s = 0; s < c->nstripes; s++) {
		pthread_mutex_lock(&c->stripes[s].lock);
		for (size_t i = 0; i < STRIPE_SLOTS; i++) {
			const struct cnt_entry *e = &c->e[s * STRIPE_SLOTS + i];

			if (e->key != 0 && now - e->last_sec < WINDOW)
				n++;
		}
		pthread_mutex_unlock(&c->stripes[s].lock);
	}
	return n;
}

/* ---- risk ----------------------------------------------------------------------- */

void
policy_risk_compute(const struct policy_risk_factors *f, struct policy_risk_breakdown *out)
{
	double avg = f->avg_per_minute > 1.0 ? f->avg_per_minute : 1.0;
	double ratio = (double)f->calls_this_minute / avg;
	int sum;

	out->rate = 0;
	if (f->minutes_observed >= 5 && ratio > 2.0) {
		double pts = 40.0 * (log2(ratio) - 1.0) / 3.0;

		out->rate = pts >= 40.0 ? 40 : (int)lround(pts);
	}
	out->novelty = (f->new_scope ? 20 : 0) + (f->new_audience ? 15 : 0);
	out->denials = f->recent_denials >= 3 ? 30 : (int)f->recent_denials * 10;
	out->hours = f->off_hours ? 15 : 0;
	sum = out->rate + out->novelty + out->denials + out->hours;
	out->score = sum > 100 ? 100 : sum;
}

#define SEEN_MAX 32
#define DENIALS_MAX 8
#define EWMA_ALPHA 0.2
#define DENIAL_WINDOW 900 /* seconds */

struct bl_entry {
	uint64_t key;
	int64_t last_sec;
	int64_t minute;
	uint32_t this_minute;
	uint32_t minutes_observed;
	double avg;
	uint64_t seen[SEEN_MAX];
	uint32_t n_seen, seen_next;
	int64_t denials[DENIALS_MAX];
	uint32_t n_denials, den_next;
};

struct policy_baseline {
	size_t size, nstripes;
	struct stripe *stripes;
	struct bl_entry *e;
	uint64_t key[2];
	const struct policy_tz *tz;
	struct policy_hours hours;
};

struct policy_baseline *
policy_baseline_new(size_t capacity, const struct policy_tz *tz, const struct policy_hours *hours)
{
	struct policy_baseline *b = idp_xcalloc(1, sizeof(*b));
	static const struct policy_hours weekdays_8_to_19 = {0x1f, 8 * 60, 19 * 60};

	b->size = table_size(capacity);
	b->nstripes = b->size / STRIPE_SLOTS;
	b->stripes = idp_xcalloc(b->nstripes, sizeof(*b->stripes));
	b->e = idp_xcalloc(b->size, sizeof(*b->e));
	for (size_t i = 0; i < b->nstripes; i++)
		pthread_mutex_init(&b->stripes[i].lock, NULL);
	random_key(b->key);
	b->tz = tz;
	b->hours = hours != NULL ? *hours : weekdays_8_to_19;
	return b;
}

void
policy_baseline_free(struct policy_baseline *b)
{
	if (b == NULL)
		return;
	for (size_t i = 0; i < b->nstripes; i++)
		pthread_mutex_destroy(&b->stripes[i].lock);
	free(b->stripes);
	free(b->e);
	free(b);
}

static struct bl_entry *
bl_find(struct policy_baseline *b, size_t base, uint64_t key, int64_t now, bool create)
{
	struct bl_entry *victim = NULL;
	size_t start = (size_t)(key >> 32) % STRIPE_SLOTS;

	for (size_t i = 0; i < POLICY_PROBE; i++) {
		struct bl_entry *e = &b->e[base + (start + i) % STRIPE_SLOTS];

		if (e->key == key)
			return e;
		if (victim == NULL ||
		    (victim->key != 0 && (e->key == 0 || e->last_sec < victim->last_sec)))
			victim = e;
	}
	if (!create)
		return NULL;
	memset(victim, 0, sizeof(*victim));
	victim->key = key;
	victim->last_sec = now;
	victim->minute = floor_div(now, 60);
	return victim;
}

/* Fold the minutes between e->minute and minute into the moving average. */
static void
bl_roll(struct bl_entry *e, int64_t minute)
{
	int64_t gap;

	if (minute <= e->minute)
		return;
	gap = minute - e->minute;
	e->avg = e->minutes_observed == 0 ? e->this_minute
	                                  : EWMA_ALPHA * e->this_minute + (1 - EWMA_ALPHA) * e->avg;
	/* Idle minutes count as minutes with no calls (at most an hour's worth). */
	for (int64_t i = 1; i < gap && i <= 60; i++)
		e->avg *= 1 - EWMA_ALPHA;
	e->minutes_observed += gap > 1000 ? 1000 : (uint32_t)gap;
	e->this_minute = 0;
	e->minute = minute;
}

static bool
bl_seen(const struct bl_entry *e, uint64_t h)
{
	for (uint32_t i = 0; i < e->n_seen; i++) {
		if (e->seen[i] == h)
			return true;
	}
	return false;
}

static void
bl_remember(struct bl_entry *e, uint64_t h)
{
	if (bl_seen(e, h))
		return;
	e->seen[e->seen_next] = h;
	e->seen_next = (e->seen_next + 1) % SEEN_MAX;
	if (e->n_seen < SEEN_MAX)
		e->n_seen++;
}

static bool
off_hours(const struct policy_baseline *b, int64_t now_ms)
{
	struct policy_localtime lt;
	int m;

	if (b->tz == NULL)
		return false;
	policy_tz_local(b->tz, now_ms, &lt);
	m = lt.hour * 60 + lt.minute;
	return !((b->hours.days >> lt.weekday) & 1) || m < b->hours.from || m >= b->hours.to;
}

int
policy_baseline_score(struct policy_baseline *b, const char *agent, const char *const *scopes,
                      size_t n_scopes, const char *audience, int64_t now_ms,
                      struct policy_risk_breakdown *out)
{
	uint64_t key = siphash2(b->key, agent, NULL);
	size_t stripe = stripe_of(key, b->nstripes);
	int64_t now = floor_div(now_ms, 1000);
	struct policy_risk_factors f;
	struct policy_risk_breakdown tmp;
	struct bl_entry *e;

	memset(&f, 0, sizeof(f));
	f.off_hours = off_hours(b, now_ms);
	pthread_mutex_lock(&b->stripes[stripe].lock);
	e = bl_find(b, stripe * STRIPE_SLOTS, key, now, false);
	if (e == NULL) {
		f.calls_this_minute = 1;
		f.new_scope = n_scopes > 0;
		f.new_audience = audience != NULL;
	} else {
		struct bl_entry copy = *e;

		bl_roll(&copy, floor_div(now, 60));
		f.calls_this_minute = copy.this_minute + 1;
		f.avg_per_minute = copy.avg;
		f.minutes_observed = copy.minutes_observed;
		for (size_t i = 0; i < n_scopes && !f.new_scope; i++)
			f.new_scope = !bl_seen(e, siphash2(b->key, "scope", scopes[i]));
		f.new_audience = audience != NULL && !bl_seen(e, siphash2(b->key, "aud", audience));
		for (uint32_t i = 0; i < e->n_denials; i++)
			f.recent_denials += now - e->denials[i] < DENIAL_WINDOW;
	}
	pthread_mutex_unlock(&b->stripes[stripe].lock);
	policy_risk_compute(&f, out != NULL ? out : &tmp);
	return out != NULL ? out->score : tmp.score;
}

void
policy_baseline_record(struct policy_baseline *b, const char *agent, const char *const *scopes,
                       size_t n_scopes, const char *audience, bool denied, int64_t now_ms)
{
	uint64_t key = siphash2(b->key, agent, NULL);
	size_t stripe = stripe_of(key, b->nstripes);
	int64_t now = floor_div(now_ms, 1000);
	struct bl_entry *e;

	pthread_mutex_lock(&b->stripes[stripe].lock);
	e = bl_find(b, stripe * STRIPE_SLOTS, key, now, true);
	bl_roll(e, floor_div(now, 60));
	e->this_minute++;
	e->last_sec = now > e->last_sec ? now : e->last_sec;
	for (size_t i = 0; i < n_scopes; i++)
		bl_remember(e, siphash2(b->key, "scope", scopes[i]));
	if (audience != NULL)
		bl_remember(e, siphash2(b->key, "aud", audience));
	if (denied) {
		e->denials[e->den_next] = now;
		e->den_next = (e->den_next + 1) % DENIALS_MAX;
		if (e->n_denials < DENIALS_MAX)
			e->n_denials++;
	}
	pthread_mutex_unlock(&b->stripes[stripe].lock);
}

/* ---- filling the input ----------------------------------------------------------- */

void
policy_context_fill(const struct policy_context *ctx, struct policy_input *in)
{
	int64_t now = idp_now_ms(ctx->clock != NULL ? ctx->clock : idp_clock_system());
	const char *agent = NULL, *resource = NULL;

	if (ctx->tz != NULL) {
		struct policy_localtime lt;

		policy_tz_local(ctx->tz, now, &lt);
		(void)policy_input_set_int(in, POLICY_ATTR_CONTEXT_HOUR, lt.hour);
		(void)policy_input_set_int(in, POLICY_ATTR_CONTEXT_MINUTE, lt.minute);
		(void)policy_input_set_int(in, POLICY_ATTR_CONTEXT_WEEKDAY, lt.weekday);
	}
	if (policy_input_has(in, POLICY_ATTR_AGENT_ID))
		agent = in->slot[POLICY_ATTR_AGENT_ID].s;
	if (policy_input_has(in, POLICY_ATTR_RESOURCE_AUDIENCE))
		resource = in->slot[POLICY_ATTR_RESOURCE_AUDIENCE].s;
	else if (policy_input_has(in, POLICY_ATTR_REQUEST_AUDIENCE))
		resource = in->slot[POLICY_ATTR_REQUEST_AUDIENCE].s;
	if (ctx->counters != NULL && agent != NULL && resource != NULL) {
		uint32_t n = policy_counters_hit(ctx->counters, agent, resource, now);

		/* Unknown (no slot): left missing, so a rule on it fails closed. */
		if (n != POLICY_COUNT_UNKNOWN)
			(void)policy_input_set_int(in, POLICY_ATTR_CONTEXT_CALLS, n);
	}
	if (ctx->baseline != NULL && agent != NULL) {
		bool has_scopes = policy_input_has(in, POLICY_ATTR_REQUEST_SCOPES);
		const union policy_slot *s = &in->slot[POLICY_ATTR_REQUEST_SCOPES];
		int score =
		    policy_baseline_score(ctx->baseline, agent, has_scopes ? s->list.v : NULL,
		                          has_scopes ? s->list.n : 0, resource, now, NULL);

		(void)policy_input_set_int(in, POLICY_ATTR_CONTEXT_RISK, score);
	}
}
