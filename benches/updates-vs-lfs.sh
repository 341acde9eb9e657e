#!/usr/bin/env bash
# Communication-efficient updates vs plain git-lfs, on the same checkpoint
# and the same sequence of commits, in one run:
#   v1  the base model
#   v2  (a) 1% of the elements of every tensor changed (a sparse fine-tune)
#   v3  (b) a rank-16 LoRA adapter on every q_proj and v_proj, merged
#           (git-lfs: `git theta apply-lora` writes the merged file, then
#           git add; git-theta: `git theta add --update-data ADAPTER`)
#   v4  (c) every tensor of one layer (layers.3.) changed (dense)
# For each: `git add` time, .git growth, and bytes pushed (growth of the
# bare remote, LFS objects and git objects together). Then every commit is
# checked out and compared with what was committed.
#
#   cargo build --release && benches/updates-vs-lfs.sh     # 500M params, bf16 (~1 GB)
#   PARAMS=100M benches/updates-vs-lfs.sh                  # quicker
#
# Needs git, git-lfs and python3 (no packages); runs in a temporary HOME.
set -euo pipefail

PARAMS=${PARAMS:-500M}
RANK=${RANK:-16}
BIN=${GIT_THETA:-$(cd "$(dirname "$0")/.." && pwd)/target/release/git-theta}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or set GIT_THETA)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }

. "$(dirname "$0")/sandbox.sh" updates
# Bytes in files (directories' own sizes left out: they are file-system overhead).
size() { find "$1" -type f -printf '%s\n' 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
mib() { awk -v n="$1" 'BEGIN { printf "%.2f MiB", n / 1048576 }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f%%", 100 * a / b }'; }

# The edits, on bf16 safetensors files, in place (python3, no packages).
cat > "$WORK/edit.py" <<'PY'
import json, mmap, os, random, struct, sys

def tensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    base = 8 + n
    for name, t in header.items():
        a, b = t["data_offsets"]
        yield name, t, base + a, base + b

FLIP = bytes(b ^ 1 for b in range(256))

def edit(path, pick, stride):
    # Flips the low mantissa bit of every `stride`-th bf16 element of the
    # tensors `pick` accepts.
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        for name, t, a, b in tensors(path):
            if t["dtype"] != "BF16" or not pick(name):
                continue
            m[a:b:2 * stride] = m[a:b:2 * stride].translate(FLIP)
        m.flush()
        m.close()
    # Writes through a mapping need not update the modification time, which
    # git's change detection relies on.
    os.utime(path)

def adapter(path, out, rank):
    os.makedirs(out, exist_ok=True)
    rng = random.Random(7)
    mods, blobs, header, off = [], [], {}, 0
    for name, t, a, b in tensors(path):
        if name.endswith((".q_proj.weight", ".v_proj.weight")):
            rows, cols = t["shape"]
            module = name[: -len(".weight")]
            for key, shape in (("lora_A", [rank, cols]), ("lora_B", [rows, rank])):
                n = shape[0] * shape[1]
                data = struct.pack("<%df" % n, *(rng.gauss(0, 0.02) for _ in range(n)))
                k = "base_model.model.%s.%s.weight" % (module, key)
                header[k] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(data)]}
                blobs.append(data)
                off += len(data)
            mods.append(module.split(".")[-1])
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(out, "adapter_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for d in blobs:
            f.write(d)
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
           "target_modules": sorted(set(mods)), "fan_in_fan_out": False, "bias": "none"}
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)

cmd = sys.argv[1]
if cmd == "sparse":   # 1% of every tensor's elements
    edit(sys.argv[2], lambda n: True, 100)
elif cmd == "layer":  # every element of one layer
    edit(sys.argv[2], lambda n: ".layers.3." in n, 1)
elif cmd == "adapter":
    adapter(sys.argv[2], sys.argv[3], int(sys.argv[4]))
PY

git-theta example "$WORK/model" --params "$PARAMS" --dtype bf16 --seed 1 2>&1 | sed 's/^/# /'
MODEL=$WORK/model/model.safetensors
FILE_SIZE=$(stat -c %s "$MODEL")
python3 "$WORK/edit.py" adapter "$MODEL" "$WORK/adapter" "$RANK"
ADAPTER_SIZE=$(stat -c %s "$WORK/adapter/adapter_model.safetensors")

declare -A R
step() { # tool name: measures one `git add` + commit + push; the file is in place
  local tool=$1 name=$2 t g0 r0
  g0=$(size .git); r0=$(size "$WORK/$tool-remote.git")
  t=$(now)
  if [ "$tool" = theta ] && [ "$name" = lora ]; then
    git theta add model.safetensors --update-data "$WORK/adapter" 2>/dev/null
  else
    git add model.safetensors
  fi
  R[$tool,$name,add]=$(elapsed "$t")
  git commit -qm "$name"
  R[$tool,$name,grow]=$(( $(size .git) - g0 ))
  git push -q origin main 2>/dev/null
  R[$tool,$name,push]=$(( $(size "$WORK/$tool-remote.git") - r0 ))
  R[$tool,$name,sha]=$(sha256sum model.safetensors | cut -d' ' -f1)
}

run() { # tool: theta | lfs
  local tool=$1 repo=$WORK/$1
  git init -q --bare "$WORK/$tool-remote.git"
  git init -q "$repo"
  cd "$repo"
  if [ "$tool" = theta ]; then git theta track '*.safetensors' >/dev/null 2>&1
  else git lfs track '*.safetensors' >/dev/null; fi
  git add .gitattributes && git commit -qm attrs
  git remote add origin "file://$WORK/$tool-remote.git"
  git push -q origin main 2>/dev/null
  cp "$MODEL" model.safetensors
  sync
  step "$tool" base
  python3 "$WORK/edit.py" sparse model.safetensors
  step "$tool" sparse
  if [ "$tool" = lfs ]; then
    local t0
    t0=$(now)
    git theta apply-lora model.safetensors "$WORK/adapter" -o "$WORK/merged.safetensors" 2>/dev/null
    mv "$WORK/merged.safetensors" model.safetensors
    R[lfs,lora,apply]=$(elapsed "$t0")
  fi
  step "$tool" lora
  python3 "$WORK/edit.py" layer model.safetensors
  step "$tool" layer
  [ -z "$(git status --porcelain)" ] || echo "# warning: $tool: status not clean"
  local i=3 name
  for name in base sparse lora layer; do
    git checkout -q "main~$i"
    [ "$(sha256sum model.safetensors | cut -d' ' -f1)" = "${R[$tool,$name,sha]}" ] \
      || echo "# warning: $tool: checkout of $name differs"
    i=$(( i - 1 ))
  done
  git checkout -q main
  cd "$WORK"
  git clone -q "file://$WORK/$tool-remote.git" "$tool-clone" 2>/dev/null
  [ "$(sha256sum "$tool-clone/model.safetensors" | cut -d' ' -f1)" = "${R[$tool,layer,sha]}" ] \
    || echo "# warning: $tool: clone differs"
  rm -rf "$tool-clone"
}

run lfs
run theta
for n in base sparse lora layer; do
  [ "${R[lfs,$n,sha]}" = "${R[theta,$n,sha]}" ] || echo "# warning: $n: the two tools committed different files"
done

printf '\n## Updates: git-theta vs git-lfs, %s bf16 parameters (%s file), rank-%s LoRA adapter of %s, %s\n\n' \
  "$PARAMS" "$(mib "$FILE_SIZE")" "$RANK" "$(mib "$ADAPTER_SIZE")" "$(git lfs version | cut -d' ' -f1)"
printf '| commit | git add git-lfs (s) | git add git-theta (s) | .git growth git-lfs | .git growth git-theta | pushed git-lfs | pushed git-theta | git-theta / git-lfs pushed |\n'
printf '|---|---|---|---|---|---|---|---|\n'
for n in base sparse lora layer; do
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$n" "${R[lfs,$n,add]}" "${R[theta,$n,add]}" \
    "$(mib "${R[lfs,$n,grow]}")" "$(mib "${R[theta,$n,grow]}")" \
    "$(mib "${R[lfs,$n,push]}")" "$(mib "${R[theta,$n,push]}")" "$(pct "${R[theta,$n,push]}" "${R[lfs,$n,push]}")"
done
printf '\n(a) 1%%-sparse change: git-theta pushed %s of git-lfs'"'"'s bytes (target <= 3%%)\n' "$(pct "${R[theta,sparse,push]}" "${R[lfs,sparse,push]}")"
printf '(b) rank-%s LoRA: git-theta pushed %s of the adapter'"'"'s size (target <= 101%%)\n' "$RANK" "$(pct "${R[theta,lora,push]}" "$ADAPTER_SIZE")"
printf '    (git-theta'"'"'s `git theta add --update-data` writes the merged file and adds it: %s s;\n' "${R[theta,lora,add]}"
printf '    git-lfs: writing it with `git theta apply-lora` %s s + git add %s s = %s s)\n' "${R[lfs,lora,apply]}" "${R[lfs,lora,add]}" \
  "$(awk -v a="${R[lfs,lora,apply]}" -v b="${R[lfs,lora,add]}" 'BEGIN { printf "%.2f", a + b }')"
printf '(c) one-layer dense change: git-theta pushed %s of git-lfs'"'"'s bytes\n' "$(pct "${R[theta,layer,push]}" "${R[lfs,layer,push]}")"
