#!/usr/bin/env bash
# One-time setup for building the runtime for bare-metal arm64 (no OS): only the Rust target.
# rust-lld, shipped with rustup, links; a board support package supplies startup code and memory map.
set -euo pipefail
rustup target add aarch64-unknown-none aarch64-unknown-none-softfloat
echo "aarch64-unknown-none ready"
