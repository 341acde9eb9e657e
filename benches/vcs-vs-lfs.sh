#!/usr/bin/env bash
# Compares git-theta with plain git-lfs on the same checkpoint, in one run:
# first `git add`, `git add` after changing one tensor, .git growth per
# commit, checkout time, and bytes pushed to a file:// remote.
#
#   cargo build --release && benches/vcs-vs-lfs.sh            # 500M params, bf16 (~1 GB)
#   PARAMS=100M benches/vcs-vs-lfs.sh                          # quicker
#
# Needs git and git-lfs; runs in a temporary HOME (GIT_CONFIG_NOSYSTEM=1).
set -euo pipefail

PARAMS=${PARAMS:-500M}
BIN=${GIT_THETA:-$(cd "$(dirname "$0")/.." && pwd)/target/release/git-theta}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or set GIT_THETA)" >&2; exit 1; }

. "$(dirname "$0")/sandbox.sh" bench
size() { du -sb "$1" 2>/dev/null | cut -f1; }
mib() { awk -v n="$1" 'BEGIN { printf "%.1f MiB", n / 1048576 }'; }

git-theta example "$WORK/model" --params "$PARAMS" --dtype bf16 --seed 1 2>&1 | sed 's/^/# /'
MODEL=$WORK/model/model.safetensors
FILE_SIZE=$(stat -c %s "$MODEL")

# Changes 4 bytes near the end of the file: one tensor (the last) changes.
poke() { printf '\x12\x34\x56\x78' | dd of="$1" bs=1 seek=$(( FILE_SIZE - 100 )) conv=notrunc status=none; }

declare -A R
run() { # tool: theta | lfs
  local tool=$1 repo=$WORK/$1 remote=$WORK/$1-remote.git t
  git init -q --bare "$remote"
  git init -q "$repo"
  cd "$repo"
  if [ "$tool" = theta ]; then git theta track '*.safetensors' >/dev/null 2>&1
  else git lfs track '*.safetensors' >/dev/null; fi
  git add .gitattributes && git commit -qm attrs
  git remote add origin "file://$remote"
  cp "$MODEL" model.safetensors
  sync
  local g0; g0=$(size .git)
  t=$(now); git add model.safetensors; R[$tool,add1]=$(elapsed "$t")
  git commit -qm v1
  local g1; g1=$(size .git)
  R[$tool,grow1]=$(( g1 - g0 ))
  t=$(now); git push -q origin main 2>/dev/null; R[$tool,push1_t]=$(elapsed "$t")
  R[$tool,push1]=$(size "$remote/lfs")

  poke model.safetensors
  t=$(now); git add model.safetensors; R[$tool,add2]=$(elapsed "$t")
  git commit -qm v2
  local g2; g2=$(size .git)
  R[$tool,grow2]=$(( g2 - g1 ))
  t=$(now); git push -q origin main 2>/dev/null; R[$tool,push2_t]=$(elapsed "$t")
  R[$tool,push2]=$(( $(size "$remote/lfs") - R[$tool,push1] ))

  rm model.safetensors
  t=$(now); git checkout -q -- model.safetensors; R[$tool,co]=$(elapsed "$t")
  t=$(now); git checkout -q HEAD~1; R[$tool,co_prev]=$(elapsed "$t")
  git checkout -q main
  [ -z "$(git status --porcelain)" ] || echo "# warning: $tool: status not clean after checkout"
  cd "$WORK"
  t=$(now); git clone -q "file://$remote" "$tool-clone" 2>/dev/null; R[$tool,clone]=$(elapsed "$t")
  cmp -s "$tool-clone/model.safetensors" "$repo/model.safetensors" || echo "# warning: $tool: clone differs"
  rm -rf "$tool-clone"
}

run lfs
run theta

printf '\n## git-theta vs git-lfs: %s bf16 parameters, %s file, %s\n\n' "$PARAMS" "$(mib "$FILE_SIZE")" "$(git lfs version | cut -d' ' -f1)"
printf '| measure | git-lfs | git-theta |\n|---|---|---|\n'
printf '| first git add (s) | %s | %s |\n' "${R[lfs,add1]}" "${R[theta,add1]}"
printf '| git add after changing one tensor (s) | %s | %s |\n' "${R[lfs,add2]}" "${R[theta,add2]}"
printf '| .git growth, commit 1 | %s | %s |\n' "$(mib "${R[lfs,grow1]}")" "$(mib "${R[theta,grow1]}")"
printf '| .git growth, commit 2 (one tensor changed) | %s | %s |\n' "$(mib "${R[lfs,grow2]}")" "$(mib "${R[theta,grow2]}")"
printf '| checkout of the deleted file (s) | %s | %s |\n' "${R[lfs,co]}" "${R[theta,co]}"
printf '| checkout HEAD~1 (s) | %s | %s |\n' "${R[lfs,co_prev]}" "${R[theta,co_prev]}"
printf '| push 1: bytes (time s) | %s (%s) | %s (%s) |\n' "$(mib "${R[lfs,push1]}")" "${R[lfs,push1_t]}" "$(mib "${R[theta,push1]}")" "${R[theta,push1_t]}"
printf '| push 2: bytes (time s) | %s (%s) | %s (%s) |\n' "$(mib "${R[lfs,push2]}")" "${R[lfs,push2_t]}" "$(mib "${R[theta,push2]}")" "${R[theta,push2_t]}"
printf '| clone (s) | %s | %s |\n' "${R[lfs,clone]}" "${R[theta,clone]}"
