#!/usr/bin/env bash
# One-time setup for building the runtime for Android arm64 (arm64-v8a): the Rust target and
# cargo-ndk. The NDK itself is not installed here: point ANDROID_NDK_HOME at an NDK r25+ (Android
# Studio > SDK Manager > NDK, or `sdkmanager "ndk;27.2.12479018"`).
set -euo pipefail
rustup target add aarch64-linux-android
cargo install cargo-ndk --locked
if [ -z "${ANDROID_NDK_HOME:-}" ] || [ ! -d "$ANDROID_NDK_HOME/toolchains/llvm/prebuilt" ]; then
    echo "ANDROID_NDK_HOME is not set to an NDK (need \$ANDROID_NDK_HOME/toolchains/llvm/prebuilt)" >&2
    exit 1
fi
echo "aarch64-linux-android ready with NDK at $ANDROID_NDK_HOME"
