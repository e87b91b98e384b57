#!/usr/bin/env bash
# The study of issue 11 section 4: does revival pay in the dying regime (recipes/dying-relu.yaml)? Four arms
# (no revival, synaptic stripping, ReDo, GraMa) x 3 seeds in one sweep folder; the sweep's compare writes the
# seed table and the Welch intervals against the no-revival arm to runs/study/dying-relu/compare/.
# Resumable: running the script again keeps the finished runs and resumes an interrupted one (the sweep does
# that by itself). The seeds are added one at a time over all arms (seed 0, then 0,1, then 0,1,2, each the
# same sweep folder), so that a study stopped early has the same seeds in every arm.
#
#   bash scripts/study.sh            # trains what is missing, then the sweep's compare
#   bash scripts/study.sh --table    # only the per-run table below (revival seconds, dead ratio per layer)
set -euo pipefail
cd "$(dirname "$0")/.."
export TOKENIZERS_PARALLELISM=false
RF=${RF:-.venv/bin/reviveformer}
OUT=${STUDY_DIR:-runs/study}

# Dying regime: the sweep's cells are labelled method-<value>; the first, method-none, is the reference arm of
# the differences (the sweep has no --baseline; compare takes the first arm when none is labelled baseline).
if [[ "${1:-}" != "--table" ]]; then
  for seeds in 0 0,1 0,1,2; do
    "$RF" sweep recipes/dying-relu.yaml --grid revival.method=none,synaptic_stripping,redo,grama \
      --seeds "$seeds" --out "$OUT/dying-relu" wandb.mode=offline
  done
fi

# GELU reference arm (same recipe and seeds, GELU instead of ReLU, no revival): not yet run, the dying-regime
# block took the session's time. To run it, uncomment:
# "$RF" sweep recipes/dying-relu.yaml --grid model.activation=gelu --seeds 0,1,2 revival.method=none \
#   --out "$OUT/dying-relu-gelu" wandb.mode=offline

# What compare/seeds.json does not hold, per finished run (final/ present): the revival's own time (the sum of
# revival/seconds in metrics.jsonl, the measurement before each revival not included) and the mlp_post dead
# ratio per layer in the last epoch-end measurement, counted here from its fire counts (a unit is dead when
# it fires on fewer than dead_frequency of the tokens), then each arm's mean over its seeds.
"${PY:-.venv/bin/python}" - "$OUT/dying-relu" <<'PYEOF'
import json, statistics, sys
from pathlib import Path

arms: dict[str, list[tuple[float, list[float]]]] = {}
print("| run | revival s | dead mlp_post per layer (0 / 1) |\n|---|---:|---|")
for run in sorted(p for p in Path(sys.argv[1]).iterdir() if (p / "final").is_dir()):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds = sum(r.get("revival/seconds", 0.0) for r in rows)
    last = json.loads(max((run / "liveness").glob("epoch_*.json")).read_text())
    limit = last["dead_frequency"] * last["tokens"]
    per_layer = [sum(c < limit for c in d["fire_count"]) / d["units"] for d in last["sites"]["mlp_post"]]
    arms.setdefault(run.name.split("__seed-")[0], []).append((seconds, per_layer))
    print(f"| {run.name} | {seconds:.3f} | {' / '.join(f'{v:.3f}' for v in per_layer)} |")
print("\n| arm | n | revival s (mean) | dead mlp_post per layer (mean over seeds) |\n|---|---:|---:|---|")
for arm, runs in arms.items():
    layers = [statistics.mean(r[1][i] for r in runs) for i in range(len(runs[0][1]))]
    print(f"| {arm} | {len(runs)} | {statistics.mean(r[0] for r in runs):.3f} | "
          f"{' / '.join(f'{v:.3f}' for v in layers)} |")
PYEOF
