#!/usr/bin/env bash
# The study of issue 11 (docs/results.md, "Does revival pay?"): every table of it, resumable. Each block is a
# sweep (or a train/audit) that keeps what has finished and resumes what was interrupted, so running the
# script again continues where it stopped. W&B runs offline; the runs land under runs/study/ (STUDY_DIR).
#
#   1. dying-relu        recipes/dying-relu.yaml, arms none / synaptic_stripping / redo / grama, seeds 0-4
#   2. dying-relu-gelu   the same recipe with GELU, no revival: the reference arm, seeds 0-4; and
#      dying-gelu-revival  GELU with ReDo and GraMa, seeds 0-4 (compared in dying-gelu-compare)
#   3. gelu-quickstart   recipes/quickstart.yaml with GELU, arms none / redo / grama, seeds 0-1 (with their
#                        defaults neither method resets a unit here, so more seeds would repeat none)
#   4. definitions       what each dead/dormant rule finds in trained ReLU, GELU and SiLU quickstart models
#                        (audit: firing by |a|, criterion=positive, ReDo dormancy, GraMa scores)
#   5. finetune-relu/-gelu  recipes/finetune-revival.yaml from the ReLU quickstart model (runs/quickstart/
#                        baseline, trained here if missing; seeds 0-2) and from the GELU one of block 3
#                        (seeds 0-1), each method
#   6. continual-relu/-gelu  "Does revival pay when the data changes?": recipes/continual-permuted.yaml (8
#                        permuted-vocabulary tasks), every method at each task boundary, seeds 0-4; ReLU:
#                        none, fresh_start, synaptic_stripping, redo, grama, continual_backprop,
#                        shrink_perturb, l2_init; GELU: the same but synaptic_stripping (by |a| no GELU unit
#                        is ever dead). The two sweeps run side by side (one core each).
#
#   bash scripts/study.sh               # trains what is missing, then prints the tables
#   bash scripts/study.sh --table       # only the tables of what has finished
#   bash scripts/study.sh --continual   # block 6 alone (about 75 runs of 1-3 minutes each on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
export TOKENIZERS_PARALLELISM=false
RF=${RF:-.venv/bin/reviveformer}
PY=${PY:-.venv/bin/python}
OUT=${STUDY_DIR:-runs/study}
QUICKSTART=${QUICKSTART_DIR:-runs/quickstart}
W="wandb.mode=offline train.progress=false"

# Seeds are added one at a time over all arms (0, then 0,1, ...), so that a study stopped early has the
# same seeds in every arm. The first arm of each grid (none) is the reference of the differences.
sweep_seeds() {  # sweep_seeds LAST_SEED sweep-arguments...
  local last=$1 seeds=0
  shift
  for ((k = 1; k <= last + 1; k++)); do
    "$RF" sweep "$@" --seeds "$seeds"
    seeds="$seeds,$k"
  done
}

# 6: continual training (its tables: compare's plasticity section, written by each sweep and by the
# comparison of both; printed at the end)
continual() {
  local c="revival.every=task train.progress=false train.plots=false wandb.mode=offline"
  local methods="continual_backprop,shrink_perturb,l2_init,redo,grama"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 sweep_seeds 4 recipes/continual-permuted.yaml \
    --grid revival.method=none,fresh_start,synaptic_stripping,$methods --out "$OUT/continual-relu" $c &
  local relu=$!
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 sweep_seeds 4 recipes/continual-permuted.yaml model.activation=gelu \
    --grid revival.method=none,fresh_start,$methods --out "$OUT/continual-gelu" $c
  wait "$relu"
  "$RF" compare "$OUT"/continual-relu/*__seed-* "$OUT"/continual-gelu/*__seed-* \
    --out "$OUT/continual-compare" > /dev/null
}

if [[ "${1:-}" == "--continual" ]]; then
  continual
  cat "$OUT/continual-compare/compare.md"
  exit 0
fi

if [[ "${1:-}" != "--table" ]]; then
  # 1 and 2: the dying regime
  # shellcheck disable=SC2086
  sweep_seeds 4 recipes/dying-relu.yaml --grid revival.method=none,synaptic_stripping,redo,grama \
    --out "$OUT/dying-relu" $W
  # shellcheck disable=SC2086
  sweep_seeds 4 recipes/dying-relu.yaml --grid model.activation=gelu revival.method=none \
    --out "$OUT/dying-relu-gelu" $W
  # 2b: GELU with ReDo and GraMa in the same regime (their reference is block 2's GELU arm), and the two
  # comparisons across sweep folders (paired by seed): GELU arms against block 2, GELU against ReLU
  # shellcheck disable=SC2086
  sweep_seeds 4 recipes/dying-relu.yaml --grid revival.method=redo,grama model.activation=gelu \
    --out "$OUT/dying-gelu-revival" $W
  "$RF" compare "$OUT"/dying-relu-gelu/*__seed-* "$OUT"/dying-gelu-revival/*__seed-* \
    --out "$OUT/dying-gelu-compare" > /dev/null
  "$RF" compare "$OUT"/dying-relu/method-none__seed-* "$OUT"/dying-relu-gelu/*__seed-* \
    --out "$OUT/gelu-vs-relu" > /dev/null
  # 3: GELU at quickstart size (stripping is left out: by |a| it finds no dead GELU unit, block 4)
  # shellcheck disable=SC2086
  sweep_seeds 1 recipes/quickstart.yaml --grid revival.method=none,redo,grama model.activation=gelu \
    --out "$OUT/gelu-quickstart" $W
  # 4: the models the definitions are read on (ReLU: the quickstart's baseline; SiLU trained here)
  # shellcheck disable=SC2086
  "$RF" train recipes/quickstart.yaml train.output_dir="$QUICKSTART/baseline" train.resume=auto $W
  # shellcheck disable=SC2086
  "$RF" train recipes/quickstart.yaml model.activation=silu train.output_dir="$OUT/silu-quickstart" \
    train.resume=auto $W
  for model in relu:"$QUICKSTART/baseline" gelu:"$OUT/gelu-quickstart/method-none__seed-0" \
    silu:"$OUT/silu-quickstart" dying-relu:"$OUT/dying-relu/method-none__seed-0" \
    dying-gelu:"$OUT/dying-relu-gelu/activation-gelu__seed-0"; do
    name=${model%%:*} run=${model#*:}
    [[ -f "$OUT/definitions/$name-abs/liveness.json" ]] ||
      "$RF" audit "$run" --gradients --out "$OUT/definitions/$name-abs" > /dev/null
    [[ -f "$OUT/definitions/$name-positive/liveness.json" ]] ||
      "$RF" audit "$run" liveness.criterion=positive --out "$OUT/definitions/$name-positive" > /dev/null
  done
  # 5: fine-tuning with revival on (2 epochs of 200k tokens at lr 5e-4; the revival after epoch 1 acts on
  # the final validation loss)
  # shellcheck disable=SC2086
  sweep_seeds 2 recipes/finetune-revival.yaml model.init_from="$QUICKSTART/baseline/final" \
    data.max_tokens=200000 --grid revival.method=none,synaptic_stripping,redo,grama \
    --out "$OUT/finetune-relu" $W
  # shellcheck disable=SC2086
  sweep_seeds 1 recipes/finetune-revival.yaml model.init_from="$OUT/gelu-quickstart/method-none__seed-0/final" \
    data.max_tokens=200000 --grid revival.method=none,redo,grama --out "$OUT/finetune-gelu" $W
  continual
fi

# What the sweeps' compare/ tables do not hold: per arm, the revival's own time (the sum of revival/seconds in
# metrics.jsonl; the measurement before each revival not included) and the mlp_post dead ratio per layer at the
# last epoch-end measurement; then the definitions table of block 4.
"$PY" - "$OUT" <<'PYEOF'
import json, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
for sweep in ("dying-relu", "dying-relu-gelu", "dying-gelu-revival", "gelu-quickstart", "finetune-relu", "finetune-gelu"):
    runs = sorted(p for p in (out / sweep).glob("*__seed-*") if (p / "final").is_dir())
    if not runs:
        continue
    arms: dict[str, list[tuple[float, list[float]]]] = {}
    for run in runs:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        seconds = sum(r.get("revival/seconds", 0.0) for r in rows)
        last = json.loads(max((run / "liveness").glob("epoch_*.json")).read_text())
        per_layer = [len(d["dead_units"]) / d["units"] for d in last["sites"]["mlp_post"]]
        arms.setdefault(run.name.split("__seed-")[0], []).append((seconds, per_layer))
    print(f"\n{sweep}\n| arm | n | revival s (mean) | dead mlp_post per layer (mean over seeds) |\n|---|---:|---:|---|")
    for arm, rs in arms.items():
        layers = [statistics.mean(r[1][i] for r in rs) for i in range(len(rs[0][1]))]
        print(f"| {arm} | {len(rs)} | {statistics.mean(r[0] for r in rs):.3f} | "
              f"{' / '.join(f'{v:.3f}' for v in layers)} |")

# Block 4: share of mlp_post units each rule calls dead or dormant, all layers together
defs = out / "definitions"
if defs.is_dir():
    def share(layers, key):
        return sum(len(e[key]) for e in layers) / sum(e["units"] for e in layers)

    def below(layers, key, tau):
        return sum(sum(v <= tau for v in e[key]) for e in layers) / sum(e["units"] for e in layers)

    print("\n| model | dead by abs(a) | dead by a > thr (positive) | ReDo dormant, tau 0.1 | ReDo, tau 0.025 "
          "| GraMa dormant, tau 0.1 | GraMa, tau 0.025 | both ReDo and GraMa, tau 0.1 | lowest ReDo score "
          "| lowest GraMa score |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("relu", "gelu", "silu", "dying-relu", "dying-gelu"):
        a, p = defs / f"{name}-abs" / "liveness.json", defs / f"{name}-positive" / "liveness.json"
        if not (a.is_file() and p.is_file()):
            continue
        la, lp = json.loads(a.read_text()), json.loads(p.read_text())
        post_a, post_p, grama = la["sites"]["mlp_post"], lp["sites"]["mlp_post"], la["grama"]["layers"]
        both = sum(
            len({j for j, v in enumerate(e["dormancy"]) if v <= 0.1} & {j for j, v in enumerate(g["scores"]) if v <= 0.1})
            for e, g in zip(post_a, grama)
        ) / sum(e["units"] for e in post_a)
        print(f"| {name} | {share(post_a, 'dead_units'):.1%} | {share(post_p, 'dead_units'):.1%} "
              f"| {below(post_a, 'dormancy', 0.1):.1%} | {below(post_a, 'dormancy', 0.025):.1%} "
              f"| {below(grama, 'scores', 0.1):.1%} | {below(grama, 'scores', 0.025):.1%} | {both:.1%} "
              f"| {min(v for e in post_a for v in e['dormancy']):.3f} "
              f"| {min(v for g in grama for v in g['scores']):.3f} |")
PYEOF
