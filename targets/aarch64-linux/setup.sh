#!/usr/bin/env bash
# One-time setup of a Debian/Ubuntu x86-64 host for cross-building and testing the runtime for
# arm64 Linux (Raspberry Pi 4/5, Jetson): cross gcc (linker + libc), qemu-user, the Rust target.
set -euo pipefail
sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
rustup target add aarch64-unknown-linux-gnu
for t in aarch64-linux-gnu-gcc qemu-aarch64; do
    command -v "$t" >/dev/null || { echo "setup failed: $t not found" >&2; exit 1; }
done
# The linker and runner come from the repository's .cargo/config.toml:
#   [target.aarch64-unknown-linux-gnu]
#   linker = "aarch64-linux-gnu-gcc"
#   runner = "qemu-aarch64 -L /usr/aarch64-linux-gnu"
echo "aarch64-unknown-linux-gnu ready: $(aarch64-linux-gnu-gcc --version | head -1); $(qemu-aarch64 --version | head -1)"
