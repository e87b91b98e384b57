"""What torch.compile (Inductor, on this CPU) makes of a model with the LivenessMonitor installed: no graph
breaks, and no recompiles once sampled and unsampled steps have each been seen, over 3 log windows with
`liveness.sample_every=2` and a report and reset at every log (scripts/bench_parts/structure.py, the bench's
`--structure` section, which also prints the kernel counts). The counters it reads are shown to see a graph
break and a recompile when there is one, so their zeros here are not those of a counter that never moves.

Only the monitor's public API is used (LivenessMonitor(model, cfg), begin_step, counts, reset, close): these
hold whatever the monitor's counters look like inside."""

from __future__ import annotations

import sys

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from bench_parts import structure  # noqa: E402

WINDOWS = 3


@pytest.fixture(scope="module")
def measured() -> dict:
    # 2 layers, 64 wide, block 32, dynamic=False: two compiled runs (monitor off, on) in about 25 s on 2 cores
    res = structure.measure(shape=(2, 64, 32, 97), batch=4, log_every=4, windows=WINDOWS)
    structure.print_structure(res)  # the kernel counts, for the record (pytest -s shows them)
    return res


def test_no_graph_breaks_with_the_monitor(measured) -> None:
    on = measured["on"]
    assert on["windows_after_warmup"] == WINDOWS
    assert on["graph_breaks_in_warmup"] == 0
    assert on["graph_breaks_after_warmup"] == 0
    assert measured["off"]["graph_breaks_in_warmup"] == 0


def test_no_recompiles_after_warmup_with_sampling(measured) -> None:
    on, off = measured["on"], measured["off"]
    assert off["graphs_in_warmup"] == 1
    # a sampled and an unsampled variant at most, both compiled in the first window (steps 1 and 2)
    assert 1 <= on["graphs_in_warmup"] <= 2
    assert on["recompiles_after_warmup"] == 0 and off["recompiles_after_warmup"] == 0
    # dynamo's own graph count, window by window, agrees: the warm-up's graphs and not one more
    assert on["dynamo_unique_graphs"] == [on["graphs_in_warmup"]] * (1 + WINDOWS)
    assert off["dynamo_unique_graphs"] == [1] * (1 + WINDOWS)
    assert on["kernels_after_warmup"] == 0  # nothing compiled after warm-up, by Inductor's own count either
    assert (
        on["kernels"] > 0 and off["kernels"] > 0
    )  # the kernel counter was read (values: see print_structure)
    assert on["loss_finite"] and off["loss_finite"]


def test_the_counting_adds_no_kernel_launch(measured) -> None:
    """Issue 30: Inductor fuses each site's counting (compare, |a|, both sums, the accumulator update) into the
    kernel that makes the activation (layer norm, GELU), so a training step launches as many kernels with the
    monitor as without, in its sampled and its unsampled variant alike (counted in the generated code)."""
    on, off = measured["on"]["code_kernels_per_graph"], measured["off"]["code_kernels_per_graph"]
    assert len(off) == 2 and all(k > 0 for k in off)  # a forward and a backward graph, each with kernels
    assert on == off * 2  # each variant's forward and backward: no kernel more


def test_the_counters_see_a_graph_break_and_a_recompile() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        x = x + 1
        torch._dynamo.graph_break()
        return x * 2

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    counter = CompileCounter()
    g = torch.compile(f, backend=counter, dynamic=False)
    assert torch.equal(g(torch.ones(3)), torch.full((3,), 4.0))
    breaks, graphs = structure._graph_breaks(), counter.frame_count
    assert breaks >= 1 and graphs == 2  # one graph each side of the break
    g(torch.ones(5))  # a new shape under dynamic=False: both graphs compile again
    assert counter.frame_count == 2 * graphs
    torch._dynamo.reset()


def test_host_copies_are_counted_by_method() -> None:
    t = torch.arange(3)
    with structure.HostCopies() as h:
        t.sum().item()
        t.cpu().numpy()
        t.tolist()
    assert h.calls == {"item": 1, "cpu": 1, "tolist": 1, "numpy": 1}
    t[0].item()  # after the block: the original methods are back, nothing more is counted
    assert h.total() == 4
