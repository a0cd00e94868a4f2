#!/usr/bin/env bash
# Attestation: identity credentials issued per second over HTTP
# (POST /v1/agents/{id}/attest), with join tokens (pre-created, one per
# request) and with a Kubernetes-shaped RS256 workload token from a
# configured attestor.  Each success spends or checks its evidence, signs an
# ES256 credential, records its jti, updates the agent row and makes its
# audit event durable.  Medians of BENCH_RUNS runs of BENCH_SECONDS each;
# figures into docs/benchmarks.md.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. tests/bench/lib.sh

command -v wrk >/dev/null || { echo "wrk missing: make deps"; exit 1; }
runs=${BENCH_RUNS:-5}
dur=${BENCH_SECONDS:-5}
agents=${BENCH_AGENTS:-2000}
work=$(mktemp -d)
db=idpd_bench_attest
idpd=${IDPD_BIN:-bin/idpd}

bench_db "$db"

# The attestor's key: RSA 2048, its JWKS built from the modulus and exponent.
bench_idp_key "$work/k8s" bench-k8s
now=$(date +%s)
workload=$(bench_jwt "$work/k8s" bench-k8s "$(printf '{"iss":"https://kubernetes.default.svc","aud":["idpd"],"sub":"system:serviceaccount:agents:planner","iat":%d,"exp":%d,"kubernetes.io":{"namespace":"agents","serviceaccount":{"name":"planner"}}}' \
	"$now" $((now + 3600)))")

export IDPD_KEK=${IDPD_KEK:-$(openssl rand -hex 32)}
key_out=$("$idpd" api-key new --name bench-admin --roles admin)
port=$(bench_port)
{
	bench_config_head "$port" "$db"
	cat <<CFG
[[attestors]]
name = "k8s"
issuer = "https://kubernetes.default.svc"
audience = "idpd"
jwks_file = "$work/k8s.jwks.json"
algs = ["RS256"]
selectors = "k8s:ns=kubernetes.io/namespace k8s:sa=kubernetes.io/serviceaccount/name"
$(printf '%s\n' "$key_out" | tail -n +3)
CFG
} >"$work/idpd.toml"

pid=
bench_idpd_start "$work/idpd.toml" "$work/idpd.log"
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; tests/support/pg.sh stop "$BENCH_PG_DIR" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
bench_wait "$work/idpd.log" grep -q "registry: .* agent(s) loaded" "$work/idpd.log"

# Agents whose selectors the workload token satisfies, inserted directly;
# idpd's cache hears of them through NOTIFY.
psql_bench -d "$db" -c "
	INSERT INTO agents (id, agent_type, owner, capabilities, max_chain_depth,
		max_scope_per_delegation, attestation_selectors)
	SELECT format('agent-%s', lpad(g::text, 6, '0')), 'planner', 'alice@company.com',
		ARRAY['reports:read'], 1, 'read', ARRAY['k8s:ns:agents', 'k8s:sa:planner']
	FROM generate_series(0, $agents - 1) AS g" >/dev/null
creds() { psql_bench -d "$db" -At -c "SELECT count(*) FROM agent_credentials"; }

# Join tokens, as POST /v1/agents/{id}/join-tokens stores them (hash only),
# enough for every run; the secrets go to a file the load script reads.
tokens=$(( 4000 * dur * runs ))
psql_bench -d "$db" -At -c "
	CREATE TEMP TABLE t AS SELECT format('agent-%s', lpad((g % $agents)::text, 6, '0')) AS agent,
		'idpj_' || substr(md5(random()::text) || md5(random()::text), 1, 43) AS token
	FROM generate_series(0, $tokens - 1) AS g;
	INSERT INTO agent_join_tokens (agent_id, token_hash, created_by, expires_at)
		SELECT agent, encode(sha256(convert_to(token, 'UTF8')), 'hex'), 'bench',
			now() + interval '1 hour' FROM t;
	COPY t TO STDOUT WITH (FORMAT text)" >"$work/tokens.txt"

cat >"$work/join.lua" <<'LUA'
local list, i = {}, 0
function init(args)
	local skip = tonumber(args[2])
	local n = 0
	for line in io.lines(args[1]) do
		n = n + 1
		if n > skip then
			local a, t = line:match("^(%S+)\t(%S+)$")
			list[#list + 1] = {a, t}
		end
	end
end
function request()
	i = i % #list + 1
	local e = list[i]
	return wrk.format("POST", "/v1/agents/" .. e[1] .. "/attest",
		{["Content-Type"] = "application/json"},
		'{"method":"join_token","join_token":"' .. e[2] .. '"}')
end
LUA
cat >"$work/jwt.lua" <<'LUA'
local i = 0
function init(args)
	token = args[1]
	n = tonumber(args[2])
end
function request()
	i = (i + 1) % n
	return wrk.format("POST", string.format("/v1/agents/agent-%06d/attest", i),
		{["Content-Type"] = "application/json"},
		'{"method":"jwt","token":"' .. token .. '"}')
end
LUA

# One run: wrk with script args; rate = credentials recorded per second.
run() {
	bench_wrk_run creds "$work/rate.txt" "$work/p99.txt" -t1 -c16 "$@"
}

: >"$work/rate.txt"; : >"$work/p99.txt"
used=0
for _ in $(seq "$runs"); do
	run -s "$work/join.lua" "http://127.0.0.1:$port" -- "$work/tokens.txt" "$used"
	used=$(psql_bench -d "$db" -At -c "SELECT count(*) FROM agent_join_tokens WHERE used_at IS NOT NULL")
done
join_rate=$(median <"$work/rate.txt"); join_p99=$(median <"$work/p99.txt")

: >"$work/rate.txt"; : >"$work/p99.txt"
for _ in $(seq "$runs"); do
	run -s "$work/jwt.lua" "http://127.0.0.1:$port" -- "$workload" "$agents"
done
jwt_rate=$(median <"$work/rate.txt"); jwt_p99=$(median <"$work/p99.txt")
sign_rate=$(openssl speed -seconds 2 ecdsap256 2>/dev/null | awk '/256 bits ecdsa/ {print int($7)}')
kill -INT "$pid"; wait "$pid" 2>/dev/null || true; pid=

{
	echo
	echo "Measured $(date -u +%Y-%m-%d) by \`tests/bench/attest.sh\`: idpd with 2 I/O threads, PostgreSQL with"
	echo "fsync on, wrk with 1 thread and 16 connections on the same 2 cores, ${dur} s per run, median of $runs"
	echo "runs, $agents agents; the rate counts credentials recorded in PostgreSQL."
	echo
	echo "| evidence | attestations/s | p99 | per success |"
	echo "|---|---|---|---|"
	echo "| join token (pre-created, one per request) | ${join_rate} | ${join_p99} us | spend the token, lock the agent, sign, record the jti, update the record, durable audit event, commit |"
	echo "| Kubernetes-shaped RS256 workload token | ${jwt_rate} | ${jwt_p99} us | RS256 verify and the selector check, then the same |"
	echo
	echo "\`openssl speed ecdsap256\` in the same run: ${sign_rate} signs/s on one core. Attestation is bound"
	echo "by its transaction (three writes and the grouped audit commit), not by signing."
	echo
} | replace_section attest
echo "bench: attest done"
