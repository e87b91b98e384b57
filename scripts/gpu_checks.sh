#!/usr/bin/env bash
# Every GPU check of issue 21 in one call (about 8 minutes on one H200, estimated: most of it is compiling; each step has its own time limit, so one
# that hangs cannot take the others' time, and the bench rewrites its JSON after every process, so a step cut
# short keeps what it measured):
#   alone      scripts/bench.py --gpu --alone: GPT-2 124M, bf16, batch 8 x 1024; the monitor's counts on the
#              device against counts by hand; then each arm (plain HF loop, the monitor, the reviveformer
#              Trainer's step with the monitor off, the bench's own reference GPT) compiled and eager, every
#              one alone in a fresh process: ms/step, tokens/s, MFU side by side
#   structure  scripts/bench.py --structure on CUDA: graph breaks, recompiles after warm-up, Inductor kernels
#              with and without the monitor, host copies per step and per log
#   tests      the tests that run only where CUDA is
# With FULL=1, after those (about 7 more minutes):
#   nolog      the plain and monitor arms again with no report inside the timed steps (--gpu-log-every
#              1000): the report's share of the monitor's overhead
#   train      a short quickstart-stripping run on the GPU: epoch ends, revival, checkpoints, report
#   audit      `reviveformer audit --gradients` of that run's final model
#   compile    the quickstart with train.compile=true
# Usage: bash scripts/gpu_checks.sh OUT_DIR    (logs and the bench's JSON files land in OUT_DIR)
# CPU dry run of the same steps: BENCH_ARGS=--tiny MIXED_PRECISION=no bash scripts/gpu_checks.sh /tmp/gpu-dry
# (on CPU the alone and nolog steps run with fewer, shorter chunks: the figures mean nothing there, the run
# proves the code paths; the CUDA-only tests are skipped by pytest, which the tests log says)
set -u
cd "$(dirname "$0")/.."
out=${1:?usage: bash scripts/gpu_checks.sh OUT_DIR}
py=${PYTHON:-python3}
mp=${MIXED_PRECISION:-bf16}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled WANDB_SILENT=true
failed=()

step() { # name, time limit in s, command...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  tail -n 16 "$out/$name.log"
  [ "$rc" = 0 ] || failed+=("$name")
}

cuda=$("$py" - <<'EOF'
import torch, transformers, accelerate
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
print(f"{dev}; torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}")
EOF
)
echo "$cuda"
# BENCH_ARGS is a list of flags; on CPU (the dry run) the chunks are fewer and shorter
bench=(${BENCH_ARGS:-})
case $cuda in no\ CUDA*) bench+=(--gpu-rounds 2 --gpu-steps 3) ;; esac

step alone 420 "$py" scripts/bench.py --gpu --alone "${bench[@]}" --json "$out/bench_alone.json"
step structure 120 "$py" scripts/bench.py --structure --json "$out/bench_structure.json"
step tests 90 "$py" -m pytest -q -p no:cacheprovider -rs tests/test_grama.py -k "never_syncs"
if [ "${FULL:-0}" = 1 ]; then
  step nolog 240 "$py" scripts/bench.py --gpu --alone --arms plain,monitor --gpu-log-every 1000 "${bench[@]}" \
    --json "$out/bench_alone_nolog.json"
  run=/tmp/gpu-checks-run
  rm -rf "$run" "$run-compiled"
  small=(data.max_tokens=200000 "train.mixed_precision=$mp" wandb.mode=disabled train.progress=false)
  step train 120 "$py" -m reviveformer train recipes/quickstart-stripping.yaml "train.output_dir=$run" \
    train.epochs=2 "${small[@]}"
  step audit 60 "$py" -m reviveformer audit "$run/final" --gradients
  step compile 120 "$py" -m reviveformer train recipes/quickstart.yaml "train.output_dir=$run-compiled" \
    train.compile=true train.epochs=1 "${small[@]}"
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "all GPU checks passed"
