#!/usr/bin/env bash
# Installs the Debian packages Rigbox needs (idempotent) and checks the Rust toolchain.
set -euo pipefail

PACKAGES=(
  # VMM and guest images
  qemu-system-x86 qemu-utils debootstrap linux-source-6.1 e2fsprogs util-linux
  # kernel build
  build-essential bc flex bison libelf-dev libssl-dev cpio xz-utils
  # networking and tools used by the platform and its tests
  iproute2 openssh-client curl jq ca-certificates sqlite3 wrk pebble python3-venv
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "error: no Rust toolchain (cargo) found; install one with rustup (https://rustup.rs)" >&2
    exit 1
  fi
fi
echo "==> $(cargo --version)"
