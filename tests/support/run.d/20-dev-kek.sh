# Sourced by tests/support/run.sh: the key-encryption key of `make run`.
# idpd refuses to start without one.  For development it lives in
# var/dev-kek (64 hex digits, mode 0600), made once and kept, so the signing
# keys in var/pg stay readable across runs.  An IDPD_KEK already in the
# environment wins.
if [ -z "${IDPD_KEK:-}" ]; then
	if [ ! -s var/dev-kek ]; then
		mkdir -p var
		(umask 077 && openssl rand -hex 32 >var/dev-kek.tmp && mv var/dev-kek.tmp var/dev-kek)
	fi
	chmod 600 var/dev-kek
	IDPD_KEK=$(cat var/dev-kek)
	export IDPD_KEK
fi
