#!/usr/bin/env bash
# make run: a private PostgreSQL under ./var/pg (127.0.0.1:54329), the
# migrations, then idpd in the foreground on 127.0.0.1:8080 with
# config.example.toml.  Ctrl-C stops idpd (it drains), then PostgreSQL.
# A second `make run` reuses var/pg and its data.
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
pgdir=var/pg
port=${IDPD_PG_PORT:-54329}

tests/support/pg.sh start "$pgdir" "$port"
tests/support/pg.sh createdb "$pgdir" idpd
if [ "$port" != 54329 ]; then
	export IDPD_DATABASE_URL="postgresql://postgres@127.0.0.1:$port/idpd"
fi

for hook in tests/support/run.d/*.sh; do
	[ -f "$hook" ] && . "$hook"
done

bin/idpd serve --config "${IDPD_RUN_CONFIG:-config.example.toml}" --migrate &
pid=$!
# A non-interactive shell starts background jobs with SIGINT ignored, so
# forward Ctrl-C (and a TERM sent to make) to idpd as SIGTERM.
trap 'kill -TERM "$pid" 2>/dev/null || true' INT TERM

set +e
wait "$pid"
rc=$?
while kill -0 "$pid" 2>/dev/null; do
	wait "$pid"
	rc=$?
done
set -e
tests/support/pg.sh stop "$pgdir"
echo "idpd exited with status $rc; PostgreSQL stopped (data kept in $pgdir)" >&2
exit "$rc"
