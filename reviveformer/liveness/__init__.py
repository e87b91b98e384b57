"""Neuron liveness: per-unit firing counts at three sites of every GPT-2 block, and the report built from them.

`LivenessMonitor` counts, on the model's device and with no host sync, for each watched site and layer:
how many observed token positions each unit fired on (`fire_count`), the sum of |a| per unit (`abs_sum`, for
the ReDo dormancy score) and the number of observed positions (`tokens`), all in one flat float64 tensor per
monitor (exact integers below 2**53; int64 again on the host). `report()` sums the counts over processes and
turns them into the design.md `liveness.json` numbers; `snapshot()` closes a window without a host sync and
`PendingCounts.result()` reads it later.

One module per job:
- `counting`: what runs in the forward: the counters of one watched module (`_Probe`), the counting subclasses
  and how they are installed, the compiled count kernel (`fused_counting`), the dtype-exact threshold, and the
  histogram bin edges (`histogram_edges`).
- `monitor`: `LivenessMonitor`: installs and removes the counting, decides when it counts (sampling, pauses,
  windows, histogram cadence), its state_dict, and the counters summed over processes.
- `report`: `LivenessCounts`, `layer_liveness`, `LayerLiveness`, `LivenessReport`: the design.md numbers and
  liveness.json, built from the counts.
- `effective_capacity`: `capacity`, effective capacity from a model's dead and pruned units.
- `options`: `LivenessConfig`, the recipe's `liveness` section (below `reviveformer.config`, which assembles
  the sections: nothing here imports the config tree).

The names below are the package's API, imported from `reviveformer.liveness`. A test that patches a module
global patches it in the module that reads it (e.g. `liveness.counting._FLOAT_EXACT`), not here.
"""

from reviveformer.liveness.counting import (
    _KERNEL,  # noqa: F401  (tests/test_liveness.py checks the compiled kernel was used)
    HISTOGRAM_RANGE,
    HISTOGRAM_ZERO_MIN,
    _Probe,  # noqa: F401  (scripts/bench.py times _Probe.count)
    fused_counting,
    histogram_edges,
)
from reviveformer.liveness.effective_capacity import capacity
from reviveformer.liveness.monitor import STATE_VERSION, LivenessMonitor, PendingCounts, Reduce
from reviveformer.liveness.options import COUNTING, CRITERIA, LivenessConfig
from reviveformer.liveness.report import LayerLiveness, LivenessCounts, LivenessReport, layer_liveness

__all__ = [
    "COUNTING",
    "CRITERIA",
    "HISTOGRAM_RANGE",
    "HISTOGRAM_ZERO_MIN",
    "STATE_VERSION",
    "LayerLiveness",
    "LivenessConfig",
    "LivenessCounts",
    "LivenessMonitor",
    "LivenessReport",
    "PendingCounts",
    "Reduce",
    "capacity",
    "fused_counting",
    "histogram_edges",
    "layer_liveness",
]
