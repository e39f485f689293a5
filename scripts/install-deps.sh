#!/usr/bin/env bash
# Installs the Debian packages herald needs to build, test and benchmark,
# only those that are missing. Idempotent; called by `make run`, `make test`
# and `make bench` before anything else. Needs root (or sudo) on Debian 12.
set -euo pipefail

# build-essential brings gcc 12 and its sanitizer runtimes (libasan8, libubsan1, libtsan2)
# for the VARIANT=asan and VARIANT=tsan builds; python3-pytest-xdist runs the integration
# suite in parallel; python3-cryptography mints RS256/ES256 subscriber tokens in the tests;
# xxd embeds the admin UI's files and the JS client in herald (GET /herald.js), nodejs
# runs the JS client's tests (node --test), terser measures its minified size, node-typescript
# (tsc) type-checks its herald.d.ts; libcurl4-openssl-dev is the HTTP client of the backend
# hooks (src/hooks, multi interface).
pkgs=(
  build-essential clang libclang-rt-14-dev pkg-config
  libssl-dev zlib1g-dev libhiredis-dev libjansson-dev libcmocka-dev libcurl4-openssl-dev
  python3 python3-pytest python3-pytest-xdist python3-websockets python3-cryptography
  redis-server curl chromium xxd nodejs terser node-typescript
)
if [ "${1:-}" = "--bench" ]; then
  pkgs+=(nginx-light libnginx-mod-nchan gnuplot-nox)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d keeps Debian from starting nginx/redis as system services on install:
# herald's tests and benchmarks start their own instances on their own ports.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
