# 10-dev-key.sh - sourced by tests/support/run.sh before idpd starts.
#
# `make run` needs an operator key to be useful.  The first run creates a
# development admin key with `idpd api-key new` and keeps it in
# var/dev-admin-key (mode 0600); every run writes var/idpd.toml, which is
# config.example.toml plus that key's [[api_keys]] section (its SHA-256 hash
# only), points run.sh at it through IDPD_RUN_CONFIG, and prints the key.
# Delete var/dev-admin-key to get a new one.  Never use this key outside a
# development machine.

dev_key_file=var/dev-admin-key
dev_config=var/idpd.toml

mkdir -p var
if [ ! -s "$dev_key_file" ]; then
	dev_out=$(bin/idpd api-key new --name dev-admin --roles admin)
	(umask 077 && printf '%s\n' "${dev_out%%$'\n'*}" >"$dev_key_file.tmp")
	mv "$dev_key_file.tmp" "$dev_key_file"
	unset dev_out
	echo "make run: created a development admin key in $dev_key_file" >&2
fi
chmod 600 "$dev_key_file"
dev_key=$(head -n 1 "$dev_key_file")
case $dev_key in
idpk_*) ;;
*)
	echo "make run: $dev_key_file does not hold an idpd API key; delete it to make a new one" >&2
	exit 1
	;;
esac
dev_hash="sha256:$(printf '%s' "$dev_key" | sha256sum | cut -d ' ' -f 1)"
{
	cat config.example.toml
	printf '\n# Added by tests/support/run.d/10-dev-key.sh for `make run`: the development\n'
	printf '# admin key kept in %s (only its hash is here).\n' "$dev_key_file"
	printf '[[api_keys]]\nname = "dev-admin"\nhash = "%s"\nroles = ["admin"]\n' "$dev_hash"
} >"$dev_config.tmp"
mv "$dev_config.tmp" "$dev_config"
export IDPD_RUN_CONFIG=$dev_config
echo "make run: development admin key (from $dev_key_file): $dev_key" >&2
echo "make run: try  curl -s -H \"Authorization: Bearer \$(cat $dev_key_file)\" http://127.0.0.1:8080/v1/agents" >&2
unset dev_key dev_hash
