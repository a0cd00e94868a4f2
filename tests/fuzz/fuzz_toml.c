/*
 * libFuzzer target for the configuration reader: the raw TOML parser, then
 * the key table on top of it.  Any input must end in a config, a document or
 * a diag, never a crash, a leak or undefined behaviour.
 */
#include <stddef.h>
#include <stdint.h>

#include "idpd/config.h"
#include "idpd/toml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct idp_toml *doc = NULL;
	struct idpd_config *cfg = NULL;
	struct idp_diag diag;

	idp_diag_init(&diag);
	if (idp_toml_parse("fuzz.toml", (const char *)data, size, NULL, &doc, &diag) == IDP_OK) {
		const struct idp_toml_node *root = idp_toml_root(doc);

		/* Quote top-level keys back, as the config layer does in its errors. */
		for (size_t i = 0; i < idp_toml_count(root) && i < 8; i++) {
			const struct idp_toml_node *n = idp_toml_child(root, i);

			idp_toml_error(doc, &diag, idp_toml_key_line(n), idp_toml_key_col(n),
			               IDP_TOML_EXCERPT_KEY, "%s", idp_toml_key(n));
			idp_toml_error(doc, &diag, idp_toml_line(n), idp_toml_col(n),
			               IDP_TOML_EXCERPT_LINE, "%s",
			               idp_toml_type_name(idp_toml_type(n)));
		}
		idp_toml_free(doc);
	}
	idp_diag_init(&diag);
	if (idpd_config_parse("fuzz.toml", (const char *)data, size, &cfg, &diag) == IDP_OK)
		idpd_config_free(cfg);
	return 0;
}
