#!/usr/bin/env bash
# `git merge` of two fine-tunes of one checkpoint where every tensor changed
# on both sides, so the merge driver computes every tensor (the worst case).
# Reports the driver's wall time and peak RSS, and the whole `git merge`
# (driver, then git writing the merged checkpoint into the working tree; its
# peak RSS is git's, which holds a filter's output in memory at checkout),
# against the time to read the three versions and write the result:
# `git theta smudge` of base, ours and theirs to /dev/null plus a clean of the
# merged checkpoint into an empty object store. Target: driver within 2x.
#
#   cargo build --release && benches/git-merge.sh         # 1B params, bf16 (~2 GB a version)
#   PARAMS=200M STRATEGY=ties PARAMS_LIST=density=0.5 benches/git-merge.sh
#
# Needs git, git-lfs and ~20 GB of disk for 1B; runs in a temporary HOME.
set -euo pipefail

PARAMS=${PARAMS:-1B}
STRATEGY=${STRATEGY:-average}
PARAMS_LIST=${PARAMS_LIST:-}
BIN=${GIT_THETA:-$(cd "$(dirname "$0")/.." && pwd)/target/release/git-theta}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or set GIT_THETA)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time (GNU time) is required for peak RSS" >&2; exit 1; }

. "$(dirname "$0")/sandbox.sh" merge-bench
timed() { # label cmd...: runs cmd (stdout discarded), prints "label: S s, R MiB peak RSS"
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" > /dev/null
  read -r secs kib < "$WORK/time"
  printf '%-44s %8.2f s  %8.0f MiB peak RSS\n' "$label" "$secs" "$(awk -v k="$kib" 'BEGIN { print k / 1024 }')"
  echo "$secs" > "$WORK/last"
}

repo=$WORK/repo
mkdir -p "$repo" && cd "$repo"
git init -q
git theta track '*.safetensors' >/dev/null
git add .gitattributes && git commit -qm attrs
version() { # seed of the tune, or "" for the base
  rm -rf "$WORK/gen"
  if [ -z "$1" ]; then git theta example "$WORK/gen" --params "$PARAMS" --seed 1 >/dev/null
  else git theta example "$WORK/gen" --params "$PARAMS" --seed 1 --tune . --tune-seed "$1" >/dev/null; fi
  mv "$WORK/gen/model.safetensors" model.safetensors
}
echo "# $PARAMS parameters (bf16), every tensor changed on both sides, strategy $STRATEGY $PARAMS_LIST"
version ""; git add model.safetensors; git commit -qm base
git switch -qc theirs
version 3; git commit -qam theirs
git switch -qc ours main
version 2; git commit -qam ours
echo "# checkpoint: $(stat -c %s model.safetensors) bytes, $(git show HEAD:model.safetensors | sed -n 1p | grep -o '"tensors":[0-9]*')"

# The driver alone, on the three manifests, as git runs it (it writes the
# merged manifest over its second argument).
git cat-file blob main:model.safetensors > "$WORK/O"
git cat-file blob ours:model.safetensors > "$WORK/A"
git cat-file blob theirs:model.safetensors > "$WORK/B"
cp "$WORK/A" "$WORK/M"
export THETA_MERGE_STRATEGY=$STRATEGY THETA_MERGE_PARAMS=$PARAMS_LIST
timed "merge driver (read 3, compute, store)" git-theta merge-driver "$WORK/O" "$WORK/M" "$WORK/B" model.safetensors
driver=$(cat "$WORK/last")

# Baseline: read the three versions, write the result into an empty store.
t=$(now)
for v in O A B; do git-theta smudge model.safetensors < "$WORK/$v" > /dev/null; done
read3=$(elapsed "$t")
printf '%-44s %8.2f s\n' "read 3 versions (smudge to /dev/null)" "$read3"
git-theta smudge model.safetensors < "$WORK/M" > "$WORK/merged.safetensors"
timed "write the result (clean into an empty store)" \
  git -c lfs.storage="$WORK/fresh-lfs" theta clean model.safetensors < "$WORK/merged.safetensors"
write=$(cat "$WORK/last")
rm -rf "$WORK/fresh-lfs" "$WORK/merged.safetensors"
awk -v d="$driver" -v r="$read3" -v w="$write" \
  'BEGIN { printf "driver / (read 3 + write) = %.2f (target <= 2)\n", d / (r + w) }'

# The whole `git merge`, cold: first remove the objects the driver run above
# stored (those of the merged manifest that no input has).
oids() { grep -ho '"oid":"[0-9a-f]*"' "$@" | cut -d'"' -f4 | sort -u; }
comm -23 <(oids "$WORK/M") <(oids "$WORK/O" "$WORK/A" "$WORK/B") | while read -r oid; do
  rm -f ".git/lfs/objects/${oid:0:2}/${oid:2:2}/$oid"
done
timed "git merge (driver + checkout of the result)" git merge -q --no-edit theirs
[ "$(git show HEAD:model.safetensors | sha256sum)" = "$(sha256sum < "$WORK/M")" ] || echo "# warning: git merge gave another manifest"
[ -z "$(git status --porcelain)" ] || echo "# warning: status not clean after the merge"
