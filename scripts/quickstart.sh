#!/usr/bin/env bash
# Set up (scripts/setup.sh), then train the quickstart's two arms on the embedded corpus (baseline and
# synaptic stripping: same seed, same data), and compare them. Extra arguments are overrides for both arms.
# Running it again continues (train.resume=auto) rather than starting over.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TOKENIZERS_PARALLELISM=false
RF=.venv/bin/reviveformer
OUT=${QUICKSTART_DIR:-runs/quickstart}
$RF train recipes/quickstart.yaml train.output_dir="$OUT/baseline" train.resume=auto "$@"
$RF train recipes/quickstart-stripping.yaml train.output_dir="$OUT/stripping" train.resume=auto "$@"
$RF compare "$OUT/baseline" "$OUT/stripping" --out "$OUT/compare"
