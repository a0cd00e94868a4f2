#!/usr/bin/env bash
# ES256 through idpd's JWS code (build/tests/bench/jws_bench: a typical access
# token signed and verified with a key loaded once) against the machine's raw
# rate (`openssl speed ecdsap256`), in the same run, alternating, median of 3
# runs each.  Both report per second of CPU time.  Target (issue 6): idpd at
# least 80% of OpenSSL.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. tests/bench/lib.sh

command -v openssl >/dev/null || { echo "openssl missing: make deps"; exit 1; }
bin=${BUILD:-build}/tests/bench/jws_bench
[ -x "$bin" ] || { echo "$bin missing: make bench"; exit 1; }

runs=${BENCH_RUNS:-3}
out=${BUILD:-build}/bench-keys
: >"$out.idpd"
: >"$out.openssl"
for _ in $(seq "$runs"); do
	"$bin" 3 | tee -a "$out.idpd"
	openssl speed -seconds 5 ecdsap256 2>/dev/null | grep 'ecdsa (nistp256)' | tee -a "$out.openssl"
done

# "idpd jws ES256 sign   23456 /s CPU ..." -> 23456
idpd_rate() { grep "^$1 " "$out.idpd" | awk '{for (i = 1; i <= NF; i++) if ($i == "/s") { print $(i-1); break }}' | median; }
sign=$(idpd_rate "idpd jws ES256 sign")
verify=$(idpd_rate "idpd jws ES256 verify")
raw_sign=$(idpd_rate "raw EVP_PKEY_sign")
raw_verify=$(idpd_rate "raw EVP_PKEY_verify")
# " 256 bits ecdsa (nistp256)   0.0000s   0.0001s  26912.3   9128.4": the last two fields.
ossl_sign=$(awk '{print $(NF-1)}' "$out.openssl" | median)
ossl_verify=$(awk '{print $NF}' "$out.openssl" | median)
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "n/a" }'; }

{
	echo
	echo "Measured $(date -u +%Y-%m-%d) by \`tests/bench/keys.sh\`: \`build/tests/bench/jws_bench 3\` and"
	echo "\`openssl speed -seconds 5 ecdsap256\` ($(openssl version | awk '{print $1, $2}')) alternating in one run, one"
	echo "thread each, median of $runs runs, rates per second of CPU time."
	echo
	echo "| ES256 | idpd (\`idp_jws_sign\` / \`idp_jws_verify\`, access token) | raw \`EVP_PKEY\`, digest given | \`openssl speed\` | idpd / openssl |"
	echo "|---|---|---|---|---|"
	echo "| sign | $sign/s | $raw_sign/s | $ossl_sign/s | $(pct "$sign" "$ossl_sign") |"
	echo "| verify | $verify/s | $raw_verify/s | $ossl_verify/s | $(pct "$verify" "$ossl_verify") |"
	echo
	echo "idpd's figure includes everything a token costs: JSON serialization, base64url, SHA-256 of the"
	echo "signing input and the DER to \`r||s\` conversion (sign); strict parsing, header checks, kid lookup"
	echo "and the range check of r and s (verify). Target (issue 6): at least 80% of OpenSSL's rate."
	echo
} | replace_section keys
echo "bench: keys done"
