#!/usr/bin/env bash
# The main job on built-in example data: builds git-theta, writes a small
# Llama-shaped example model and inspects it.
# Usage: scripts/demo.sh [DIR]   (default: ./demo)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$root/demo}"
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
theta="$root/target/release/git-theta"

rm -rf "$dir"
mkdir -p "$dir"
echo "== git theta example $dir/base"
"$theta" example "$dir/base" --seed 0
echo
echo "== git theta inspect $dir/base/model.safetensors"
"$theta" inspect "$dir/base/model.safetensors"
echo
echo "== the same model in 4 MB shards"
"$theta" example "$dir/sharded" --seed 0 --shard-size 4MB
"$theta" inspect "$dir/sharded" | tail -n 8
