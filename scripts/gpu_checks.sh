#!/usr/bin/env bash
# Every check that needs a GPU, in one call (about 8 minutes on one H200; each step has its own time limit, so
# one that hangs cannot take the others' time):
#   bench      scripts/bench.py --gpu: GPT-2 124M, bf16, monitor on/off vs a plain loop, eager and compiled,
#              and the monitor's counts on the device against counts by hand
#   train      a short quickstart-stripping run on the GPU in bf16: epoch ends, revival, checkpoints, report
#   audit      `reviveformer audit --gradients` of that run's final model
#   compile    the same run with train.compile=true
#   tests      the tests that run only where CUDA is
#   alone      scripts/bench.py --gpu --alone: the plain and monitor arms each alone in its own process
# Usage: bash scripts/gpu_checks.sh OUT_DIR    (logs and bench_gpu.json land in OUT_DIR)
# CPU dry run of the same steps: BENCH_ARGS=--tiny MIXED_PRECISION=no bash scripts/gpu_checks.sh /tmp/gpu-dry
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
  tail -n 12 "$out/$name.log"
  [ "$rc" = 0 ] || failed+=("$name")
}

"$py" - <<'EOF'
import torch, transformers, accelerate
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
print(f"{dev}; torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}")
EOF

run=/tmp/gpu-checks-run
rm -rf "$run" "$run-compiled"
small=(data.max_tokens=200000 "train.mixed_precision=$mp" wandb.mode=disabled train.progress=false)
# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
step bench 300 "$py" scripts/bench.py --gpu ${BENCH_ARGS:-} --json "$out/bench_gpu.json"
step train 120 "$py" -m reviveformer train recipes/quickstart-stripping.yaml "train.output_dir=$run" \
  train.epochs=2 "${small[@]}"
step audit 60 "$py" -m reviveformer audit "$run/final" --gradients
step compile 120 "$py" -m reviveformer train recipes/quickstart.yaml "train.output_dir=$run-compiled" \
  train.compile=true train.epochs=1 "${small[@]}"
step tests 90 "$py" -m pytest -q -p no:cacheprovider tests/test_grama.py -k "never_syncs"
# shellcheck disable=SC2086
step alone 240 "$py" scripts/bench.py --gpu --alone ${BENCH_ARGS:-} --json "$out/bench_gpu_alone.json"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "all GPU checks passed"
