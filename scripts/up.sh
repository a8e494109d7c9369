#!/usr/bin/env bash
# Sets everything up on a fresh Debian 12 machine (as root) and runs the
# platform all in one: embedded SQLite, servers on loopback.
#   API  http://127.0.0.1:8080   SSH  127.0.0.1:2222   apps  http://<name>.localhost:8081
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (VMs need network namespaces and /dev/kvm)" >&2; exit 1; }
source scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "==> building rigboxd, rig and the guest agent (release)"
cargo build --release -p rigboxd -p rigbox-cli -p rigbox-guest-agent
install -m 0755 target/release/rigboxd target/release/rig target/release/rigbox-agent /usr/local/bin/

echo "==> host check"
rigboxd doctor

echo "==> guest images (cached by recipe; the first build takes about 10 minutes)"
rigboxd image build

echo "==> starting Rigbox (Ctrl-C stops the servers; running workspaces are re-adopted at the next start)"
exec rigboxd up
