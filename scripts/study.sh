#!/usr/bin/env bash
# The study of issue 11 section 4: does revival pay in the dying regime (recipes/dying-relu.yaml)? Four arms
# (no revival, synaptic stripping, ReDo, GraMa) x 3 seeds in one sweep folder; the sweep's compare writes the
# seed table and the Welch intervals against the no-revival arm to runs/study/dying-relu/compare/.
# Resumable: running the script again keeps the finished runs and resumes an interrupted one (the sweep does
# that by itself). The seeds are added one at a time over all arms (seed 0, then 0,1, then 0,1,2, each the
# same sweep folder), so that a study stopped early has the same seeds in every arm.
#
#   bash scripts/study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export TOKENIZERS_PARALLELISM=false
RF=${RF:-.venv/bin/reviveformer}
OUT=${STUDY_DIR:-runs/study}

# Dying regime: the sweep's cells are labelled method-<value>; the first, method-none, is the reference arm of
# the differences (the sweep has no --baseline; compare takes the first arm when none is labelled baseline).
for seeds in 0 0,1 0,1,2; do
  "$RF" sweep recipes/dying-relu.yaml --grid revival.method=none,synaptic_stripping,redo,grama \
    --seeds "$seeds" --out "$OUT/dying-relu" wandb.mode=offline
done

# GELU reference arm (same recipe and seeds, GELU instead of ReLU, no revival): not yet run, the dying-regime
# block took the session's time. To run it, uncomment:
# "$RF" sweep recipes/dying-relu.yaml --grid model.activation=gelu --seeds 0,1,2 revival.method=none \
#   --out "$OUT/dying-relu-gelu" wandb.mode=offline
