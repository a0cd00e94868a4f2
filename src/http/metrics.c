/*
 * metrics.c - the collector list behind GET /metrics (see metrics.h).
 */
#include "idpd/metrics.h"

#define MAX_COLLECTORS 32

static struct {
	metrics_collector fn;
	void *ctx;
} collectors[MAX_COLLECTORS];
static size_t n_collectors;

int
metrics_register(metrics_collector fn, void *ctx)
{
	if (n_collectors == MAX_COLLECTORS)
		return IDP_ETOOBIG;
	collectors[n_collectors].fn = fn;
	collectors[n_collectors].ctx = ctx;
	n_collectors++;
	return IDP_OK;
}

void
metrics_clear(void)
{
	n_collectors = 0;
}

void
metrics_render(struct idp_buf *out)
{
	for (size_t i = 0; i < n_collectors; i++)
		collectors[i].fn(out, collectors[i].ctx);
}
