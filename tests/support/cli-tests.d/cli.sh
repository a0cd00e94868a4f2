#!/usr/bin/env bash
# Command-line checks that need no database: what idpd prints, what it
# keeps to itself, and its exit codes.  Sourced by tests/support/run-tests.sh,
# which reads the last line: "N passed, N failed".
cd "$(dirname "${BASH_SOURCE[0]}")/../../.." || exit 1
pass=0
fail=0
check() { # description, then a command that must succeed
	local what=$1
	shift
	if "$@"; then
		pass=$((pass + 1))
	else
		fail=$((fail + 1))
		echo "FAIL: $what" >&2
	fi
}

# A database URL libpq cannot parse: refused, and its text (the password) not shown.
out=$(IDPD_DATABASE_URL='postgresql://idpd:s3cr%zzet@127.0.0.1:1/x' \
	"$IDPD_BIN" migrate --config config.example.toml 2>&1)
rc=$?
check "a bad database URL fails" test "$rc" -ne 0
check "a bad database URL is not echoed" bash -c '! grep -q s3cr <<<"$1"' _ "$out"

# A URL with credentials is never quoted in a configuration error, whatever its key.
cfg=$(mktemp)
printf 'database = { url = "postgresql://idpd:S3cr3tPW@db/idpd" }\n[log]\nlevel = "postgresql://u:S3cr3tPW@h"\n' >"$cfg"
out=$("$IDPD_BIN" check-config "$cfg" 2>&1)
rc=$?
check "a config with an inline table fails" test "$rc" -ne 0
check "a URL in a config error is not quoted" bash -c '! grep -q S3cr3tPW <<<"$1"' _ "$out"
rm -f "$cfg"

# check-config refuses what serve would: a time zone that does not load.
cfg=$(mktemp)
printf '[policy]\ntimezone = "Mars/Olympus"\n' >"$cfg"
"$IDPD_BIN" check-config "$cfg" >/dev/null 2>&1
check "check-config refuses an unknown time zone" test $? -ne 0
printf '[policy]\ntimezone = "Europe/Paris"\n' >"$cfg"
check "check-config takes a known time zone" bash -c '"$1" check-config "$2" >/dev/null 2>&1' _ "$IDPD_BIN" "$cfg"
rm -f "$cfg"

# api-key new: a name the configuration would refuse is refused here too.
"$IDPD_BIN" api-key new --name "cleanup cron" --roles maintenance >/dev/null 2>&1
check "api-key new refuses a name with a space" test $? -eq 2
"$IDPD_BIN" api-key new --name "$(printf 'a%.0s' $(seq 65))" --roles maintenance >/dev/null 2>&1
check "api-key new refuses a 65-character name" test $? -eq 2
block=$("$IDPD_BIN" api-key new --name cleanup-cron --roles maintenance | tail -n +3)
cfg=$(mktemp)
printf '[database]\nurl = "postgresql://idpd@127.0.0.1/idpd"\n%s\n' "$block" >"$cfg"
check "the printed [[api_keys]] block loads" bash -c '"$1" check-config "$2" >/dev/null' _ "$IDPD_BIN" "$cfg"
rm -f "$cfg"

# Output that cannot be written is a failure, not an exit 0 and an empty file.
if [ -w /dev/full ]; then
	"$IDPD_BIN" api-key new --name cron --roles maintenance >/dev/full 2>/dev/null
	check "api-key new to a full disk fails" test $? -ne 0
fi

echo "$pass passed, $fail failed"
