#!/usr/bin/env bash
# Builds and runs CommuCat on a fresh Debian machine as root with only Rust installed.
#
#   scripts/run.sh                 first start: creates ./commucat-data/server.key (mode 0600)
#                                  if missing and prints the server's public key
#   scripts/run.sh <args>          runs `commucat <args>`, e.g. `scripts/run.sh --help`
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/packages.sh
ensure_packages build-essential pkg-config

cargo build --release --locked -p commucat
bin=target/release/commucat

if [ "$#" -gt 0 ]; then
  exec "$bin" "$@"
fi

data=commucat-data
mkdir -p "$data"
chmod 700 "$data"
if [ -f "$data/server.key" ]; then
  "$bin" pubkey --key "$data/server.key"
else
  "$bin" keygen --out "$data/server.key"
fi
echo
echo "Give clients the public key above (the invite). Commands:"
"$bin" --help
