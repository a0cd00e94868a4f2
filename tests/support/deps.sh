#!/usr/bin/env bash
# Install the Debian packages idpd needs to build, test, run and benchmark,
# but only those that are missing, so a second call costs a few dpkg queries.
set -euo pipefail

pkgs=(
	build-essential pkg-config clang libclang-rt-14-dev
	libmicrohttpd-dev libpq-dev libjansson-dev libssl-dev openssl
	libcmocka-dev libcurl4-openssl-dev libjwt-dev
	postgresql postgresql-contrib util-linux iproute2 wrk tzdata curl jq xxd
	libfaketime
)

missing=()
for p in "${pkgs[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
	sudo=sudo
else
	sudo=
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
