#!/usr/bin/env bash
# pg.sh - the private PostgreSQL cluster that `make run` and `make test` share.
#
#   pg.sh start DIR PORT [fast]   initdb if needed, then start on 127.0.0.1:PORT
#   pg.sh stop DIR [MODE]         pg_ctl stop (MODE: fast | immediate | smart)
#   pg.sh status DIR              exit 0 when running
#   pg.sh createdb DIR NAME [TEMPLATE]
#   pg.sh url DIR [DB]            print the connection URL
#
# initdb and postgres refuse to run as root, so as root they run as the
# `postgres` user (created by Debian's postgresql package).  When that user
# cannot reach DIR (a checkout under a private home, say), the cluster lives
# in /tmp and DIR becomes a symlink to it.  "fast" turns fsync off: right for
# a throwaway test cluster (only the OS crashing could lose a commit), wrong
# for benchmarks of durability, which therefore never pass it.
set -euo pipefail

cmd=${1:?usage: pg.sh start|stop|status|createdb|url DIR ...}
dir=${2:?DIR missing}

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$bindir" ] || { echo "pg.sh: PostgreSQL server binaries not found (make deps)" >&2; exit 1; }

as_pg() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

resolve() {
	if [ ! -e "$dir" ]; then
		mkdir -p "$(dirname "$dir")"
		local parent
		parent=$(cd "$(dirname "$dir")" && pwd)
		if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- sh -c 'cd "$1"' _ "$parent" 2>/dev/null; then
			local alt
			alt=/tmp/idpd-pg-$(printf '%s' "$parent/$(basename "$dir")" | md5sum | cut -c1-12)
			mkdir -p "$alt"
			ln -s "$alt" "$dir"
			echo "pg.sh: postgres cannot reach $parent; cluster lives in $alt" >&2
		else
			mkdir -p "$dir"
		fi
	fi
	real=$(readlink -f "$dir")
	if [ "$(id -u)" -eq 0 ]; then
		chown postgres: "$real"
	fi
}

port_of() {
	cat "$real/port" 2>/dev/null || { echo "pg.sh: no cluster at $dir" >&2; exit 1; }
}

case "$cmd" in
start)
	port=${3:?PORT missing}
	fast=${4:-}
	resolve
	if [ ! -f "$real/data/PG_VERSION" ]; then
		as_pg "$bindir/initdb" -D "$real/data" -U postgres --auth=trust -E UTF8 --no-locale \
			>"$real/initdb.log" 2>&1 || { cat "$real/initdb.log" >&2; exit 1; }
		{
			echo "listen_addresses = '127.0.0.1'"
			echo "unix_socket_directories = ''"
			echo "max_connections = 200"
			echo "shared_buffers = 128MB"
			if [ "$fast" = fast ]; then
				echo "fsync = off"
				echo "full_page_writes = off"
			fi
		} >>"$real/data/postgresql.conf"
	fi
	echo "$port" >"$real/port"
	if as_pg "$bindir/pg_ctl" -D "$real/data" status >/dev/null 2>&1; then
		exit 0
	fi
	# setsid: a Ctrl-C meant for idpd must not also hit PostgreSQL; the
	# scripts stop it in order, after idpd has closed its connections.
	as_pg setsid "$bindir/pg_ctl" -D "$real/data" -l "$real/postgres.log" -w -t 60 \
		-o "-p $port" start >/dev/null || { tail -n 20 "$real/postgres.log" >&2; exit 1; }
	;;
stop)
	mode=${3:-fast}
	[ -e "$dir" ] || exit 0
	real=$(readlink -f "$dir")
	[ -f "$real/data/PG_VERSION" ] || exit 0
	if as_pg "$bindir/pg_ctl" -D "$real/data" status >/dev/null 2>&1; then
		as_pg "$bindir/pg_ctl" -D "$real/data" -m "$mode" -w -t 60 stop >/dev/null
	fi
	;;
status)
	real=$(readlink -f "$dir")
	as_pg "$bindir/pg_ctl" -D "$real/data" status >/dev/null 2>&1
	;;
createdb)
	name=${3:?NAME missing}
	template=${4:-template1}
	real=$(readlink -f "$dir")
	port=$(port_of)
	if ! psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
		"SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1; then
		psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
			-c "CREATE DATABASE \"$name\" TEMPLATE \"$template\"" >/dev/null
	fi
	;;
url)
	real=$(readlink -f "$dir")
	port=$(port_of)
	echo "postgresql://postgres@127.0.0.1:$port/${3:-idpd}"
	;;
*)
	echo "pg.sh: unknown command $cmd" >&2
	exit 2
	;;
esac
