#!/usr/bin/env bash
# Installs the Debian packages Gantry's build, tests and demo need (root on Debian); a no-op
# when they are present. busybox-static gives the sample image a shell; iproute2 gives `ip`;
# nftables gives `nft`, which agents use for service addresses and node ports.
set -euo pipefail
pkgs=(busybox-static iproute2 nftables)
need=()
for pkg in "${pkgs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "deps: need root to install: ${need[*]}" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
