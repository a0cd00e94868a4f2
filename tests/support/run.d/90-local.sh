# 90-local.sh - sourced by tests/support/run.sh, last: var/idpd.toml is
# written anew at every `make run` (10-dev-key.sh, 30-dev-idp.sh), so what
# an operator adds by hand would be gone at the next start.  Sections kept
# in var/local.toml (an [[api_keys]] block printed by `idpd api-key new`,
# a [[resources]] entry, ...) are appended to it at every start instead.

if [ -s var/local.toml ]; then
	{
		printf '\n# Appended from var/local.toml by tests/support/run.d/90-local.sh.\n'
		cat var/local.toml
	} >>"${IDPD_RUN_CONFIG:-var/idpd.toml}"
	echo "make run: added var/local.toml to ${IDPD_RUN_CONFIG:-var/idpd.toml}" >&2
fi
