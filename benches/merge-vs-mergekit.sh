#!/usr/bin/env bash
# git theta merge against mergekit on the same inputs, in one run: a
# Llama-shaped bf16 model and three fine-tuned variants, merged with ties and
# with linear; wall time and peak RSS of each (GNU time), the time to read
# the inputs and write an output of the same size (the floor for linear),
# and the ratios.
#
#   cargo build --release && benches/merge-vs-mergekit.sh      # ~1B params, bf16
#   PARAMS=300M benches/merge-vs-mergekit.sh                   # quicker
#   MERGEKIT=/path/to/venv/bin/mergekit-yaml benches/merge-vs-mergekit.sh
#
# Disk: 4 inputs + 4 outputs of 2 bytes per parameter (16 GB at 1B).
# mergekit runs when `mergekit-yaml` is on PATH or MERGEKIT names it
# (pip install mergekit==0.1.5); otherwise only git-theta's figures print.
# The page cache is not dropped: every run reads warm inputs.
set -euo pipefail

PARAMS=${PARAMS:-1B}
DEVICE=${DEVICE:-auto}
BIN=${GIT_THETA:-$(cd "$(dirname "$0")/.." && pwd)/target/release/git-theta}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or set GIT_THETA)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "GNU time (/usr/bin/time) is required" >&2; exit 1; }
MERGEKIT=${MERGEKIT:-$(command -v mergekit-yaml || true)}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/theta-merge-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

"$BIN" example base --params "$PARAMS" --dtype bf16 --seed 1 2>&1 | sed 's/^/# /'
for i in 1 2 3; do
  "$BIN" example "v$i" --params "$PARAMS" --dtype bf16 --seed 1 --tune . --tune-seed "$i" >/dev/null 2>&1
done
BYTES=$(stat -c %s base/model.safetensors)

cat > ties.yml <<'YAML'
models:
  - model: v1
    parameters: {weight: 0.5, density: 0.5}
  - model: v2
    parameters: {weight: 0.3, density: 0.5}
  - model: v3
    parameters: {weight: 0.2, density: 0.5}
base_model: base
merge_method: ties
dtype: bfloat16
YAML
cat > linear.yml <<'YAML'
models:
  - model: v1
    parameters: {weight: 0.5}
  - model: v2
    parameters: {weight: 0.3}
  - model: v3
    parameters: {weight: 0.2}
merge_method: linear
dtype: bfloat16
YAML

declare -A T M
measure() { # key command...
  local key=$1; shift
  /usr/bin/time -f '%e %M' -o "$WORK/time.$key" "$@" >"$WORK/log.$key" 2>&1 \
    || { echo "$key failed:"; tail -20 "$WORK/log.$key"; exit 1; }
  read -r T[$key] M[$key] < "$WORK/time.$key"
  rm -rf "$WORK/out"
}

# The floor for linear: read the three inputs once and write one output.
measure io sh -c 'cat v1/model.safetensors v2/model.safetensors v3/model.safetensors >/dev/null && head -c '"$BYTES"' /dev/zero > io.out && sync -f io.out && rm io.out'
measure theta_linear "$BIN" merge linear.yml out --device "$DEVICE"
measure theta_ties "$BIN" merge ties.yml out --device "$DEVICE"
if [ -n "$MERGEKIT" ]; then
  measure mk_linear "$MERGEKIT" linear.yml out --no-copy-tokenizer --no-write-model-card --quiet
  measure mk_ties "$MERGEKIT" ties.yml out --no-copy-tokenizer --no-write-model-card --quiet
fi

mib() { awk -v k="$1" 'BEGIN { printf "%.0f MiB", k / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "model: $PARAMS params bf16 ($(awk -v b="$BYTES" 'BEGIN { printf "%.2f GB", b / 1e9 }') per file), 3 variants + base, device $DEVICE, $(nproc) cores"
printf '%-22s %10s %12s\n' run "wall s" "peak RSS"
for k in io theta_linear theta_ties mk_linear mk_ties; do
  [ -n "${T[$k]:-}" ] && printf '%-22s %10s %12s\n' "$k" "${T[$k]}" "$(mib "${M[$k]}")"
done
echo
echo "linear / (read inputs + write output): $(ratio "${T[theta_linear]}" "${T[io]}")x (target <= 1.5)"
if [ -n "$MERGEKIT" ]; then
  echo "ties speed-up over mergekit: $(ratio "${T[mk_ties]}" "${T[theta_ties]}")x (target >= 5)"
  echo "ties peak RSS, git-theta / mergekit: $(ratio "${M[theta_ties]}" "${M[mk_ties]}") (target <= 0.25)"
  echo "linear speed-up over mergekit: $(ratio "${T[mk_linear]}" "${T[theta_linear]}")x"
  echo "linear peak RSS, git-theta / mergekit: $(ratio "${M[theta_linear]}" "${M[mk_linear]}")"
fi
