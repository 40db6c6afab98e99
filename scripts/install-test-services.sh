#!/usr/bin/env bash
# Installs the services the tests start themselves when they are missing: Redis, headless Chromium,
# PostgreSQL (server) and nginx (the deployed architecture: tests/serving/test_deployed_architecture.py).
# Tests start their own server on a free loopback port; nothing here is left running: the packages'
# own services (postgresql on 5432, nginx on 80) are kept from starting while they are installed.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# Debian/Ubuntu keep the PostgreSQL server programs in /usr/lib/postgresql/<version>/bin, off PATH
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  need+=(postgresql)
fi
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # invoke-rc.d asks policy-rc.d whether a package may start its service; 101 = no. Only ours is removed.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    trap '$sudo rm -f "$policy"' EXIT
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
