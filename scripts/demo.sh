#!/usr/bin/env bash
# The main job on built-in example data: builds git-theta, writes a small
# Llama-shaped example model and inspects it, versions it in a git repository
# (the model, a fine-tune of one layer, diffed tensor by tensor, then a PEFT
# LoRA adapter side-loaded as a low-rank update), merges a second fine-tune from another branch with
# `git merge`, frankenmerges layers of two models and TIES-merges two
# fine-tunes onto the base.
# Usage: scripts/demo.sh [DIR]   (default: ./demo)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$(mkdir -p "${1:-$root/demo}" && cd "${1:-$root/demo}" && pwd)"
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
export PATH="$root/target/release:$PATH" # `git theta` finds git-theta here
# Vulkan loaders (looking for a GPU) want a runtime dir, and say so without one.
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -d "$XDG_RUNTIME_DIR" ]; then
  export XDG_RUNTIME_DIR="$(mktemp -d)"
fi
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

step "a LoRA update: a rank-8 PEFT adapter on layer 2's q_proj and v_proj, side-loaded"
# A PEFT adapter folder as `save_pretrained` writes it (python3, no packages).
python3 - "$dir/lora" <<'PY'
import json, os, random, struct, sys
out = sys.argv[1]; os.makedirs(out, exist_ok=True); rng = random.Random(0)
header, blobs, off = {}, [], 0
for mod, rows in (("q_proj", 256), ("v_proj", 128)):
    for key, shape in (("lora_A", [8, 256]), ("lora_B", [rows, 8])):
        data = struct.pack("<%df" % (shape[0] * shape[1]), *(rng.gauss(0, 0.02) for _ in range(shape[0] * shape[1])))
        header["base_model.model.model.layers.2.self_attn.%s.%s.weight" % (mod, key)] = {
            "dtype": "F32", "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs.append(data); off += len(data)
h = json.dumps(header).encode(); h += b" " * (-len(h) % 8)
open(os.path.join(out, "adapter_model.safetensors"), "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
json.dump({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
          open(os.path.join(out, "adapter_config.json"), "w"))
PY
before=$(lfs_kib)
git theta add model.safetensors --update-data "$dir/lora"
git -c user.name=demo -c user.email=demo@example.com commit -q -m "LoRA on layer 2"
echo "tensor objects after commit 3: $(lfs_kib) KiB (+$(( $(lfs_kib) - before )) KiB: the adapter's factors, not the merged tensors)"
echo "tensors stored as low-rank updates: $(git show HEAD:model.safetensors | grep -c '"update":"low-rank"')"
git status --short
git theta apply-lora "$dir/tuned/model.safetensors" "$dir/lora" -o "$dir/merged.safetensors"
echo "apply-lora writes the same bytes as the commit:"
sha256sum model.safetensors "$dir/merged.safetensors" | sed "s|$dir/||"

step "what git stores for the checkpoint: a manifest (first lines)"
git show HEAD:model.safetensors | sed -n 1,3p | cut -c1-160
step "check out the first commit again: byte for byte the original"
git checkout -q HEAD~2 -- model.safetensors
sha256sum model.safetensors "$dir/base/model.safetensors" | sed "s|$dir/||"
git checkout -q HEAD -- model.safetensors
git status --short

step "git merge: a second fine-tune on another branch, merged tensor by tensor"
git theta example "$dir/tuned2" --seed 0 --tune layers.1. --tune layers.3.mlp.up_proj --tune-seed 2
git switch -q -c other HEAD~2
cp "$dir/tuned2/model.safetensors" model.safetensors
git -c user.name=demo -c user.email=demo@example.com commit -q -am "Fine-tune layer 1 and layer 3's up_proj"
git switch -q -
# layer 1: only `other` changed it, taken whole; layer 3's up_proj: changed on
# both branches, averaged (the default; .theta.toml can choose ties, ...).
git -c user.name=demo -c user.email=demo@example.com merge --no-edit other
git log --oneline --graph | sed -n 1,5p
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

step "git theta merge: TIES of two fine-tunes onto the base (short form)"
git theta merge --method ties --base base tuned:0.6 tuned2:0.4 --density 0.5 -o ties
git theta inspect ties | tail -n 4
