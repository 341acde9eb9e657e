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

. "$(dirname "$0")/sandbox.sh" diff-bench
# best of 3 runs of "$@" (output discarded): "wall cpu" seconds, cpu being
# user + system time, which a machine shared with other work does not inflate.
best() {
  local b="999999 0" t
  for _ in 1 2 3; do
    /usr/bin/time -o "$WORK/time" -f '%e %U %S' "$@" >/dev/null 2>&1
    t=$(tail -n 1 "$WORK/time" | awk '{ printf "%.2f %.2f", $1, $2 + $3 }')
    b=$(awk -v a="$b" -v t="$t" 'BEGIN { split(a, x, " "); split(t, y, " "); print (y[1] < x[1]) ? t : a }')
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
readboth() { sh -c 'cat "$0" "$1" | xargs cat > /dev/null' "$WORK/old.list" "$WORK/new.list"; }

CHANGED=$(git theta diff HEAD~1 HEAD --stat | sed -n 1p)
echo "# $CHANGED"
echo "# device: $(git theta doctor 2>/dev/null | grep -i 'will use' || echo "${THETA_DEVICE:-auto}")"
readboth; readboth # warm the page cache
T_READ=$(best sh -c 'cat "$0" "$1" | xargs cat' "$WORK/old.list" "$WORK/new.list")
T_THETA=$(best git theta diff HEAD~1 HEAD)
T_NOVERIFY=$(best env THETA_DIFF_VERIFY=0 git theta diff HEAD~1 HEAD)
T_WT=$(best git theta diff HEAD~1)
T_GIT=$(best git diff HEAD~1 HEAD)
ratio() { awk -v a="${1%% *}" -v b="${2%% *}" 'BEGIN { printf "%.2f", a / b }'; }
row() { # label "wall cpu"
  printf '%-56s %7s %7s %7s\n' "$1" "${2%% *}" "${2##* }" "$(ratio "$2" "$T_READ")"
}
printf '%-56s %7s %7s %7s\n' "$(awk -v n="$SIZE" 'BEGIN{printf "2 versions x %.2f GiB, every tensor changed", n/2^30}')" wall cpu "x read"
row "read both versions from page cache (cat)" "$T_READ"
row "git theta diff HEAD~1 HEAD" "$T_THETA"
row "  same, THETA_DIFF_VERIFY=0 (objects not re-hashed)" "$T_NOVERIFY"
row "git theta diff HEAD~1 (working tree hashed, mapped)" "$T_WT"
row "git diff HEAD~1 HEAD (driver; git rebuilds both files)" "$T_GIT"

if [ -n "${GT020_VENV:-}" ]; then
  # git-theta 0.2.0 (Python; `pip install git-theta==0.2.0 safetensors colorama`
  # in GT020_VENV) against this one on the same two versions of a smaller F32
  # model (0.2.0 reads safetensors through numpy, which has no BF16, and its
  # `git add` takes minutes per 100 MB), each in its own HOME and repository.
  PY_PARAMS=${PY_PARAMS:-5M}
  git theta example "$WORK/pa" --params "$PY_PARAMS" --dtype f32 --seed 1 >/dev/null 2>&1
  git theta example "$WORK/pb" --params "$PY_PARAMS" --dtype f32 --seed 1 --tune . >/dev/null 2>&1
  two_commits() { # repo-dir tracking-command...
    mkdir -p "$1" && cd "$1" && git init -q && shift && "$@" >/dev/null 2>&1
    cp "$WORK/pa/model.safetensors" . && git add . >/dev/null 2>&1 && git commit -qm v1 >/dev/null 2>&1
    cp "$WORK/pb/model.safetensors" . && git add . >/dev/null 2>&1 && git commit -qm v2 >/dev/null 2>&1
  }
  two_commits "$WORK/ours" git theta track model.safetensors
  T_OURS=$(best git diff HEAD~1 HEAD)
  (
    export HOME=$WORK/pyhome PATH="$GT020_VENV/bin:$PATH" GIT_THETA_CHECKPOINT_TYPE=safetensors
    mkdir -p "$HOME"
    git config --global user.name bench
    git config --global user.email bench@example.com
    git lfs install --skip-repo >/dev/null
    two_commits "$WORK/theirs" sh -c 'git theta install && git theta track model.safetensors'
    T_PY=$(best git diff HEAD~1 HEAD)
    echo
    printf '%-56s %7s %7s\n' "$PY_PARAMS params F32, every tensor changed" wall cpu
    printf '%-56s %7s %7s\n' "git diff HEAD~1 HEAD, this git-theta" ${T_OURS}
    printf '%-56s %7s %7s\n' "git diff HEAD~1 HEAD, git-theta 0.2.0" ${T_PY}
    awk -v a="${T_PY%% *}" -v b="${T_OURS%% *}" 'BEGIN { printf "speed-up (wall): %.0fx\n", a / b }'
  )
fi
