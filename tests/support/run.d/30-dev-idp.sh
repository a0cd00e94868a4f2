# 30-dev-idp.sh - sourced by tests/support/run.sh: a development identity
# provider for `make run`, so a reader can act as a human (docs/walkthrough.md).
#
# The first run makes an RSA key in var/dev-idp.pem (mode 0600) and its JWKS in
# var/dev-idp.jwks.json; every run adds an [[idp]] section for it to
# var/idpd.toml (written by 10-dev-key.sh).  tests/support/dev-idp-token.sh
# EMAIL mints a 10-minute RS256 token of this IdP for EMAIL.  Never trust this
# IdP outside a development machine: its private key sits in var/.

dev_idp_key=var/dev-idp.pem
dev_idp_jwks=var/dev-idp.jwks.json

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

if [ ! -s "$dev_idp_key" ]; then
	(umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
		-out "$dev_idp_key.tmp" 2>/dev/null && mv "$dev_idp_key.tmp" "$dev_idp_key")
	echo "make run: created a development IdP key in $dev_idp_key" >&2
fi
chmod 600 "$dev_idp_key"
dev_idp_hex=$(openssl rsa -in "$dev_idp_key" -noout -modulus 2>/dev/null | cut -d= -f2)
# hex to bytes with printf alone (xxd is not on every machine)
dev_idp_n=$(printf '%b' "$(printf '%s' "$dev_idp_hex" | sed 's/../\\x&/g')" | b64url)
printf '{"keys":[{"kty":"RSA","kid":"dev-idp-1","alg":"RS256","use":"sig","n":"%s","e":"AQAB"}]}\n' \
	"$dev_idp_n" >"$dev_idp_jwks"
{
	printf '\n# Added by tests/support/run.d/30-dev-idp.sh for `make run`: the development\n'
	printf '# IdP (tests/support/dev-idp-token.sh EMAIL mints its tokens).\n'
	printf '[[idp]]\nname = "dev-idp"\nissuer = "https://idp.dev.local"\naudience = "idpd"\n'
	printf 'jwks_file = "%s"\nalgs = ["RS256"]\nprincipal_claim = "email"\n' "$dev_idp_jwks"
} >>"${IDPD_RUN_CONFIG:-var/idpd.toml}"
unset dev_idp_n dev_idp_hex
