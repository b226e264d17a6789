#!/usr/bin/env bash
# One-time setup on a Mac (Apple Silicon or Intel) for building the runtime for macOS on Apple
# Silicon and for iOS. Requires Xcode (for iOS) or the Command Line Tools (macOS only).
set -euo pipefail
[ "$(uname -s)" = Darwin ] || { echo "run this on macOS: Apple targets link with Apple's toolchain" >&2; exit 1; }
xcode-select -p >/dev/null || { echo "install Xcode or run: xcode-select --install" >&2; exit 1; }
rustup target add aarch64-apple-darwin aarch64-apple-ios aarch64-apple-ios-sim
echo "Apple targets ready (SDK: $(xcrun --show-sdk-path 2>/dev/null || echo none))"
