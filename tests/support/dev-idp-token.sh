#!/usr/bin/env bash
# dev-idp-token.sh EMAIL [TTL_SECONDS] - a bearer token of the development IdP
# of `make run` (tests/support/run.d/30-dev-idp.sh) naming EMAIL: an RS256 JWT
# with iss https://idp.dev.local, aud idpd, email_verified true, valid 600 s by
# default.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
key=$top/var/dev-idp.pem
email=${1:?usage: dev-idp-token.sh EMAIL [TTL_SECONDS]}
ttl=${2:-600}
[ -s "$key" ] || { echo "dev-idp-token.sh: no $key; start idpd with make run first" >&2; exit 1; }
case $email in *\"* | *\\*) echo "dev-idp-token.sh: bad email" >&2; exit 2 ;; esac
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"RS256","typ":"JWT","kid":"dev-idp-1"}' | b64url)
claims=$(printf '{"iss":"https://idp.dev.local","aud":"idpd","sub":"%s","email":"%s","email_verified":true,"iat":%d,"exp":%d}' \
	"$email" "$email" "$now" "$((now + ttl))" | b64url)
sig=$(printf '%s.%s' "$header" "$claims" | openssl dgst -sha256 -sign "$key" -binary | b64url)
printf '%s.%s.%s\n' "$header" "$claims" "$sig"
