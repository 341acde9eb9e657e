#!/usr/bin/env bash
# Runs git-theta's whole test suite, installing what the tests need first:
# git-lfs (versioning tests), Mesa's software Vulkan driver lavapipe and the
# Vulkan loader (GPU kernels are tested on it), and Rust's toolchain if absent.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v git-lfs >/dev/null 2>&1 || need+=(git-lfs)
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || [ -e /usr/share/vulkan/icd.d/lvp_icd.aarch64.json ] \
  || ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1' || need+=(libvulkan1)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo not found; install Rust from https://rustup.rs" >&2
  exit 1
fi

# The Vulkan loader wants a runtime dir; GPU tests must never fall back to
# the CPU silently.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
export THETA_REQUIRE_GPU="${THETA_REQUIRE_GPU:-1}"

# A real third-party checkpoint for the real-weights tests (90 MB, cached).
cache="${THETA_TEST_CACHE:-$HOME/.cache/git-theta-tests}"
if [ -z "${THETA_REAL_MODEL:-}" ] && [ -x ../shared/data/fetch-real-model.sh ]; then
  if model=$(../shared/data/fetch-real-model.sh "$cache" 2>/dev/null); then
    export THETA_REAL_MODEL="$model"
  else
    echo "test.sh: could not fetch the real model; its tests will say they were skipped" >&2
  fi
fi

cargo test --workspace "$@"
if grep -q '^gpu *=' engine/Cargo.toml 2>/dev/null; then
  # The same suite without GPU support compiled in.
  THETA_REQUIRE_GPU=0 cargo test --workspace --no-default-features "$@"
fi
