#!/usr/bin/env bash
# redis-server (Debian's package) for the tests that share a rate limit between gateway
# processes through Redis. Installs it when missing; prints its path. The tests start their
# own server on a free loopback port (a system one on 6379 is left alone).
#   scripts/install-redis.sh
set -euo pipefail
if bin="$(command -v redis-server)"; then echo "$bin"; exit 0; fi
if [ -x /usr/bin/redis-server ]; then echo /usr/bin/redis-server; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt_install() {
  apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends redis-server >/dev/null
}
apt_install 2>/dev/null || { apt-get -o DPkg::Lock::Timeout=600 update >/dev/null && apt_install; }
command -v redis-server
