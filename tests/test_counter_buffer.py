"""The monitor's counters as one flat tensor with per-site views, and the window read without a host sync:
aliasing, exact counts through windows and moves, a snapshot that holds its own window only, the sum over 2
processes, and a training run's liveness rows under the steps that closed their windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_liveness import (
    KILLED,
    N_INNER,
    N_LAYER,
    Capture,
    assert_counts_match,
    batch,
    run,
    tiny_model,
)
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import REPO, launch_findings, tiny_overrides
from reviveformer.config import SITES, LivenessConfig, load_config
from reviveformer.liveness import LivenessCounts, LivenessMonitor
from reviveformer.liveness.monitor import PendingCounts


def _as_state(counts: LivenessCounts) -> dict:
    """`counts` in the monitor's state_dict form (what the independent-count check reads)."""
    return {
        "sites": {
            site: {
                key: torch.from_numpy(getattr(counts, key)[site])
                for key in ("fire_count", "abs_sum", "tokens")
            }
            for site in counts.fire_count
        }
    }


def _watched(activation: str) -> tuple[LivenessConfig, GPT2LMHeadModel, LivenessMonitor, Capture]:
    """The test model with a monitor and the independent hooks on it."""
    cfg = LivenessConfig()
    model = tiny_model(activation)
    return cfg, model, LivenessMonitor(model, cfg), Capture(model)


def _probe_tensors(monitor: LivenessMonitor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every counter tensor the probes update, and every histogram tensor."""
    counters, hists = [], []
    for p in monitor._all_probes():
        counters += [*p.tokens, *p.fire_count, *p.abs_sum]
        hists += p.hist
    return counters, hists


@pytest.mark.parametrize("n_layer", [2, 5])
def test_the_counters_are_one_flat_tensor_whatever_the_layer_count(n_layer) -> None:
    cfg = GPT2Config(n_layer=n_layer, n_embd=32, n_head=2, n_positions=16, vocab_size=50, n_inner=128)
    monitor = LivenessMonitor(GPT2LMHeadModel(cfg), LivenessConfig())
    counters, hists = _probe_tensors(monitor)
    assert len(counters) == n_layer * 9  # per layer and site (3): tokens, fires, |a| sums, all views
    storages = {t.untyped_storage().data_ptr() for t in counters}
    assert storages == {monitor._counters.untyped_storage().data_ptr()}
    assert {t.untyped_storage().data_ptr() for t in hists} == {monitor._hists.untyped_storage().data_ptr()}
    # the layout counts() ships: per site (fires, tokens, |a| sums) of every layer
    assert monitor._counters.numel() == n_layer * sum(2 * u + 1 for u in (128, 128, 32))
    # the views tile the flat tensor exactly once: no gap, no overlap
    covered = torch.zeros(monitor._counters.numel(), dtype=torch.int64)
    base = monitor._counters.data_ptr()
    for t in counters:
        at = (t.data_ptr() - base) // t.element_size()
        covered[at : at + t.numel()] += 1
    assert covered.eq(1).all()


def test_a_forward_updates_the_flat_tensor_in_place() -> None:
    model = tiny_model("relu")
    monitor = LivenessMonitor(model, LivenessConfig())
    buffer = monitor._counters
    assert not buffer.any()
    run(model, monitor, seeds=[1], padded=False)
    assert monitor._counters is buffer  # updated in place, not replaced
    # tokens of every site and layer: the positions of the batch, read from the flat layout itself
    ids, _ = batch(1, padded=False)
    for site in SITES:
        at, layers, units = monitor._layout[site]
        tokens = buffer[at + layers * units : at + layers * units + layers]
        assert tokens.tolist() == [float(ids.numel())] * N_LAYER
    monitor.reset()
    assert monitor._counters is buffer and not buffer.any()


def test_counts_stay_exact_through_a_fresh_window_and_moves() -> None:
    cfg, model, monitor, capture = _watched("gelu_new")
    masks = run(model, monitor, seeds=[31, 32])
    with monitor.fresh_window():
        inner = Capture(model)
        inner_masks = run(model, monitor, seeds=[33])
        inner.close()
        assert_counts_match(monitor.state_dict(), inner, inner_masks, cfg)
    for key in [k for k in capture.acts]:  # the fresh window's activations are not the training window's
        capture.acts[key] = capture.acts[key][:2]
    model.to(torch.float64)  # an _apply that moves nothing: the counters and their views stay
    masks += run(model, monitor, seeds=[34])
    model.to(torch.float32)
    masks += run(model, monitor, seeds=[35])
    assert_counts_match(monitor.state_dict(), capture, masks, cfg)


def test_a_move_rebuilds_the_views_on_the_moved_tensor() -> None:
    model = tiny_model("relu")
    monitor = LivenessMonitor(model, LivenessConfig())
    model.to("meta")  # the only other device on a CPU machine: moving there is all this checks
    assert monitor._counters.device.type == monitor._hists.device.type == "meta"
    counters, hists = _probe_tensors(monitor)
    assert all(t._base is monitor._counters for t in counters)
    assert all(t._base is monitor._hists for t in hists)


def test_a_snapshot_holds_its_own_window_only() -> None:
    cfg, model, monitor, capture = _watched("relu")
    masks = run(model, monitor, seeds=[41, 42])
    pruned = {1: torch.zeros(64, N_INNER, dtype=torch.bool)}  # shaped like c_fc.weight (n_embd, units)
    pruned[1][:3, :10] = True
    blocking = monitor.counts(pruned_masks=pruned)  # the same window, read now (a host sync)
    pending = monitor.snapshot(pruned_masks=pruned, extra=(torch.tensor(3.5), torch.tensor([1.0, 2.0])))
    assert isinstance(pending, PendingCounts)
    assert not monitor._counters.any()  # zeroed on the device: the next window starts empty
    later = run(model, monitor, seeds=[43])
    counts = pending.result()
    assert pending.result() is counts
    np.testing.assert_array_equal(pending.extra, [3.5, 1.0, 2.0])
    window = Capture.__new__(Capture)  # the hooks' activations of the snapshot's window only
    window.acts = {key: acts[:2] for key, acts in capture.acts.items()}
    assert_counts_match(_as_state(counts), window, masks, cfg)
    for site in SITES:
        np.testing.assert_array_equal(counts.abs_sum[site], blocking.abs_sum[site])
    assert counts.capacity == blocking.capacity
    # independently: 30 pruned weights in live units of layer 1 (its dead unit 5 is pruned by 3 of them)
    dead_params = 64 + 1 + 64  # per dead unit: its c_fc column, c_fc bias, c_proj row
    n_dead = sum(len(v) for v in KILLED.values())
    total = sum(p.numel() for p in model.parameters())
    assert counts.capacity["effective_params"] == total - n_dead * dead_params - 27
    # what the monitor holds now is the later forward alone
    for key in capture.acts:
        capture.acts[key] = capture.acts[key][2:]
    assert_counts_match(monitor.state_dict(), capture, later, cfg)


@pytest.mark.slow
def test_two_processes_sum_the_snapshot_as_one_counts_it(tmp_path) -> None:
    from dist_liveness_script import data

    one = launch_findings("dist_counter_buffer_script.py", tmp_path / "one.json", processes=1, timeout=180)
    two = launch_findings("dist_counter_buffer_script.py", tmp_path / "two.json", processes=2, timeout=180)
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    _, mask = data()
    for window, rows in (("first", slice(0, 4)), ("second", slice(4, 8))):
        assert one[window] == two[window], window
        # independently: every real (unpadded) position of the window's sequences, in every layer
        assert two[window]["mlp_post"]["tokens"] == [int(mask[rows].sum())] * 2
    assert two["extra"] == [2.5, 7.0]  # the same on every process: carried, not summed


@pytest.mark.slow
def test_a_training_run_logs_each_window_under_its_own_step(tmp_path, corpus_file, monkeypatch) -> None:
    """Each train log's liveness numbers are the blocking `counts` of its window at that moment, logged under
    the log's step when they are read later (a validation, the next log, the epoch end), and the rows of
    metrics.jsonl stay in step order."""
    windows = []
    snapshot = LivenessMonitor.snapshot

    def recording(self, *args, **kwargs):
        windows.append(self.counts(pruned_masks=kwargs.get("pruned_masks")))
        return snapshot(self, *args, **kwargs)

    monkeypatch.setattr(LivenessMonitor, "snapshot", recording)
    run_dir = tmp_path / "run"
    overrides = {"data.max_tokens": 32 * 8 * 12, "train.epochs": 1, "train.eval_every": 7}
    from reviveformer.trainer import train

    train(
        load_config(REPO / "recipes" / "quickstart.yaml", tiny_overrides(run_dir, corpus_file, **overrides))
    )
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps)  # W&B drops a row of a step lower than its last
    assert len(windows) == 2  # the train logs at steps 5 and 10 (the epoch end at 12 measures on its own)
    for step, counts in zip((5, 10), windows, strict=True):
        assert counts.tokens["mlp_post"].tolist() == [5 * 8 * 32] * 2  # 5 steps of 8 blocks of 32 tokens
        liveness = [r for r in rows if r["step"] == step and "liveness/mlp_post/dead_ratio" in r]
        assert len(liveness) == 1, step
        for key, value in counts.metrics().items():
            assert liveness[0][key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
