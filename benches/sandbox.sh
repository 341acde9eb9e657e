# Sourced by the benchmark scripts after they set BIN (the git-theta binary):
# a throw-away HOME in which git, git-lfs and git-theta are configured, with
# BIN's folder first on PATH, and the timing helpers they share.
#   . "$(dirname "$0")/sandbox.sh" NAME
# Sets WORK, a fresh folder removed on exit (kept, and named, when KEEP is
# set).
command -v git-lfs >/dev/null || { echo "git-lfs is required" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/theta-$1.XXXXXX")
if [ -n "${KEEP:-}" ]; then echo "# keeping $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi
export HOME=$WORK/home GIT_CONFIG_NOSYSTEM=1 PATH="$(dirname "$BIN"):$PATH"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$WORK/run} # Vulkan loaders want one
mkdir -p "$HOME" && mkdir -p -m 700 "$XDG_RUNTIME_DIR"
git config --global user.name bench
git config --global user.email bench@example.com
git config --global init.defaultBranch main
git lfs install --skip-repo >/dev/null
git theta install >/dev/null

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
