#!/usr/bin/env bash
# The main job on built-in example data: builds git-theta, writes a small
# Llama-shaped example model and inspects it, versions it in a git repository
# (two commits: the model, then a fine-tune of one layer), diffs the two
# versions tensor by tensor, and frankenmerges
# layers of two models.
# Usage: scripts/demo.sh [DIR]   (default: ./demo)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$(mkdir -p "${1:-$root/demo}" && cd "${1:-$root/demo}" && pwd)"
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
export PATH="$root/target/release:$PATH" # `git theta` finds git-theta here
step() { printf '\n== %s\n' "$*"; }

rm -rf "${dir:?}"/*
step "git theta example base: a 5M-parameter Llama-shaped model"
git theta example "$dir/base" --seed 0
step "git theta inspect base/model.safetensors"
git theta inspect "$dir/base/model.safetensors"

step "a fine-tune of it that changed layer 3 only"
git theta example "$dir/tuned" --seed 0 --tune layers.3.

step "version the model with git: install, track, commit, commit the fine-tune"
repo="$dir/repo"
mkdir -p "$repo" && cd "$repo"
git init -q
git theta install --local
git theta track '*.safetensors'
cp "$dir/base/model.safetensors" "$dir/base/config.json" .
git add .gitattributes config.json model.safetensors
git -c user.name=demo -c user.email=demo@example.com commit -q -m "Base model"
lfs_kib() { du -sk .git/lfs/objects | cut -f1; }
echo "tensor objects after commit 1: $(lfs_kib) KiB"
cp "$dir/tuned/model.safetensors" model.safetensors
git theta status
git -c user.name=demo -c user.email=demo@example.com commit -q -am "Fine-tune layer 3"
echo "tensor objects after commit 2: $(lfs_kib) KiB (only layer 3's tensors were added)"
step "git diff HEAD~1 HEAD: which tensors the fine-tune moved, and how far"
git --no-pager diff HEAD~1 HEAD
git theta diff --stat HEAD~1 HEAD
git theta diff HEAD~1 HEAD --html "$dir/diff.html" >/dev/null
echo "per-layer chart: $dir/diff.html"
step "what git stores for the checkpoint: a manifest (first lines)"
git show HEAD:model.safetensors | head -n 3 | cut -c1-160
step "check out the first commit again: byte for byte the original"
git checkout -q HEAD~1 -- model.safetensors
sha256sum model.safetensors "$dir/base/model.safetensors" | sed "s|$dir/||"
git checkout -q HEAD -- model.safetensors
git status --short
cd "$dir"

step "git theta merge: a frankenmerge of layers 0-2 of base and 1-3 of the fine-tune"
cat > franken.yml <<'YAML'
slices:
  - sources:
      - model: base
        layer_range: [0, 3]
  - sources:
      - model: tuned
        layer_range: [1, 4]
merge_method: passthrough
YAML
git theta merge franken.yml franken
git theta inspect franken | tail -n 4
