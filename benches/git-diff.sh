#!/usr/bin/env bash
# Times diffing two versions of a checkpoint in which every tensor changed
# (a fine-tune of all tensors by about 5%), against the time to read both
# versions' bytes from the page cache:
#   read    cat of both versions' objects (warm), the floor
#   theta   git theta diff HEAD~1 HEAD (both sides read from the object store)
#   wt      git theta diff HEAD~1 (new side hashed and mapped from the working tree)
#   git     git diff HEAD~1 HEAD through the driver (git first rebuilds both
#           sides into temporary files, which the driver does not read)
# and, if a git-theta 0.2.0 (Python) is given in GT020_VENV, its `git diff`.
#
#   cargo build --release && benches/git-diff.sh          # 1B params, bf16 (2 GB a version)
#   PARAMS=100M benches/git-diff.sh                       # quicker
#   THETA_DEVICE=gpu benches/git-diff.sh                  # reduce on a GPU
#
# Needs git and git-lfs; runs in a temporary HOME (GIT_CONFIG_NOSYSTEM=1).
set -euo pipefail

PARAMS=${PARAMS:-1B}
BIN=${GIT_THETA:-$(cd "$(dirname "$0")/.." && pwd)/target/release/git-theta}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or set GIT_THETA)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/theta-diff-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export HOME=$WORK/home GIT_CONFIG_NOSYSTEM=1 PATH="$(dirname "$BIN"):$PATH"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$WORK}
mkdir -p "$HOME"
git config --global user.name bench
git config --global user.email bench@example.com
git config --global init.defaultBranch main
git theta install >/dev/null

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
best() { # best of 3 runs of "$@", output discarded
  local b=999999 t s
  for _ in 1 2 3; do
    s=$(now); "$@" >/dev/null 2>&1; t=$(elapsed "$s")
    b=$(awk -v a="$b" -v t="$t" 'BEGIN { print (t < a) ? t : a }')
  done
  echo "$b"
}

repo=$WORK/repo
mkdir -p "$repo" && cd "$repo"
git init -q
git theta track '*.safetensors' >/dev/null 2>&1
git theta example . --params "$PARAMS" --dtype bf16 --seed 1 2>&1 | sed 's/^/# /'
git add . && git commit -qm v1
git theta example . --params "$PARAMS" --dtype bf16 --seed 1 --tune . >/dev/null 2>&1
git add . && git commit -qm "v2: every tensor fine-tuned"
SIZE=$(stat -c %s model.safetensors)
objs() { git show "$1:model.safetensors" | grep -o '"oid":"[0-9a-f]*"' | cut -d'"' -f4 |
  while read -r o; do echo ".git/lfs/objects/${o:0:2}/${o:2:2}/$o"; done; }
objs HEAD~1 > "$WORK/old.list"
objs HEAD > "$WORK/new.list"
readboth() { cat "$WORK/old.list" "$WORK/new.list" | xargs cat > /dev/null; }

CHANGED=$(git theta diff HEAD~1 HEAD --stat | head -n 1)
echo "# $CHANGED"
echo "# device: $(git theta doctor 2>/dev/null | grep -i 'will use' || echo "${THETA_DEVICE:-auto}")"
readboth; readboth # warm the page cache
T_READ=$(best readboth)
T_THETA=$(best git theta diff HEAD~1 HEAD)
T_NOVERIFY=$(best env THETA_DIFF_VERIFY=0 git theta diff HEAD~1 HEAD)
T_WT=$(best git theta diff HEAD~1)
T_GIT=$(best git diff HEAD~1 HEAD)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
printf '%-52s %8s %8s\n' "$(awk -v n="$SIZE" 'BEGIN{printf "2 versions x %.2f GiB, every tensor changed", n/2^30}')" seconds "x read"
printf '%-52s %8s %8s\n' "read both versions from page cache (cat)" "$T_READ" 1.00
printf '%-52s %8s %8s\n' "git theta diff HEAD~1 HEAD" "$T_THETA" "$(ratio "$T_THETA" "$T_READ")"
printf '%-52s %8s %8s\n' "  same, THETA_DIFF_VERIFY=0 (objects not re-hashed)" "$T_NOVERIFY" "$(ratio "$T_NOVERIFY" "$T_READ")"
printf '%-52s %8s %8s\n' "git theta diff HEAD~1 (working tree hashed, mapped)" "$T_WT" "$(ratio "$T_WT" "$T_READ")"
printf '%-52s %8s %8s\n' "git diff HEAD~1 HEAD (driver; git rebuilds both files)" "$T_GIT" "$(ratio "$T_GIT" "$T_READ")"

if [ -n "${GT020_VENV:-}" ]; then
  # git-theta 0.2.0 (Python) on the same two versions, in its own repository.
  old=$WORK/old.safetensors
  git show HEAD~1:model.safetensors > /dev/null # (manifest only; rebuild below)
  git cat-file blob HEAD~1:model.safetensors | git theta smudge model.safetensors > "$old"
  py=$WORK/py && mkdir -p "$py" && cd "$py"
  PATH="$GT020_VENV/bin:$PATH"
  git init -q && git theta install >/dev/null 2>&1 || true
  git theta track model.safetensors >/dev/null
  cp "$old" model.safetensors && git add . && git commit -qm v1
  cp "$repo/model.safetensors" model.safetensors && git add . && git commit -qm v2
  T_PY=$(best git diff HEAD~1 HEAD)
  printf '%-52s %8s %8s\n' "git-theta 0.2.0: git diff HEAD~1 HEAD" "$T_PY" "$(ratio "$T_PY" "$T_READ")"
fi
