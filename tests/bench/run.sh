#!/usr/bin/env bash
# make bench: every benchmark that exists.  Each writes its figures into its
# own marked section of docs/benchmarks.md.  Never asserts on time.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
for b in tests/bench/*.sh; do
	[ "$(basename "$b")" = run.sh ] && continue
	[ "$(basename "$b")" = lib.sh ] && continue
	echo "bench: $b"
	bash "$b"
done
