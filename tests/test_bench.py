"""scripts/bench.py: every arm's trainer config loads (the bench is not run by the suite; a config the
trainer refuses would only show when someone runs it); the reference arm (the bench's own plain PyTorch GPT) has
GPT-2's parameters counted by hand, starts at a loss of ln(vocab), is causal, and trains in the bench's loop."""

from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from reviveformer.config import load_config, to_dict

spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
from bench_parts import common, gpu  # noqa: E402  (found once bench.py has put scripts/ on the path)

TRAINER_ARMS = [a for a in (*bench.TRAIN_ARMS, *bench.COMPILED_ARMS) if a != "plain"]


def test_the_arms_are_the_ones_named_here():
    # the checks below spell out each arm's settings: a new arm must be added to them
    assert sorted(TRAINER_ARMS) == ["compiled-off", "compiled-on", "kernel", "off", "on", "sample4"]


@pytest.mark.parametrize("arm", TRAINER_ARMS)
def test_every_trainer_arm_config_loads(arm, tmp_path):
    cfg = load_config(bench.RECIPE, bench._overrides(tmp_path / arm, 8, arm, ["train.log_every=4"]))
    assert cfg.liveness.enabled == (arm not in ("off", "compiled-off"))
    assert cfg.train.compile == arm.startswith("compiled")
    assert cfg.liveness.sample_every == (4 if arm == "sample4" else 1)
    assert cfg.liveness.counting == ("compiled" if arm == "kernel" else "auto")
    assert cfg.alerts.rules == [] or cfg.liveness.enabled  # alerts read liveness metrics


# ------------------------------------------------------------------ the reference arm (bench_parts/reference_gpt.py)

TINY = (2, 64, 32, 4096)  # --tiny's shape: n_layer, n_embd, block, vocab


def gpt2_param_count(n_layer: int, d: int, block: int, vocab: int) -> int:
    """GPT-2's parameters by hand: token and position tables; per block two LayerNorms (4d), qkv (3d^2 + 3d),
    attention projection (d^2 + d), MLP in (4d^2 + 4d) and out (4d^2 + d); the final LayerNorm (2d); the head
    is the token table."""
    return (
        vocab * d + block * d + n_layer * (4 * d + 3 * d * d + 3 * d + d * d + d + 8 * d * d + 5 * d) + 2 * d
    )


def test_every_gpu_arm_runs_alone():
    assert bench.ALONE_ARMS == ("plain", "monitor", "trainer", "reference")


@pytest.mark.parametrize("shape", [TINY, (12, 768, 1024, 50257)])
def test_reference_has_gpt2s_parameter_count(shape):
    from bench_parts.loops import _gpt2
    from bench_parts.reference_gpt import reference_gpt

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        n = sum(p.numel() for p in reference_gpt(*shape, "meta").parameters())
        hf = sum(p.numel() for p in _gpt2(*shape, "meta").parameters())
    assert n == gpt2_param_count(*shape)
    assert n == hf  # the HF model it stands beside
    if shape[1] == 768:
        assert n == 124_439_808  # GPT-2 small, as published with its tied head


def test_reference_loss_at_init_is_near_ln_vocab_and_causal():
    from bench_parts.reference_gpt import reference_gpt

    torch.manual_seed(0)
    model = reference_gpt(*TINY, "cpu")
    ids = torch.randint(0, TINY[3], (4, TINY[2]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = model(ids, ids)
        # GPT-2's init gives logits of std ~0.02 * sqrt(n_embd) = 0.16: the loss is ln(vocab) + about var / 2
        assert torch.isfinite(loss) and abs(loss.item() - math.log(TINY[3])) < 0.05
        # causal: a change to the last token leaves every earlier position's logits as they were
        changed = ids.clone()
        changed[:, -1] = (changed[:, -1] + 1) % TINY[3]
        a, b = model(ids), model(changed)
    assert torch.equal(a[:, :-1], b[:, :-1]) and not torch.equal(a[:, -1], b[:, -1])


def test_reference_arm_trains_in_the_bench_loop(tmp_path):
    # the --gpu --alone worker of the reference arm, eager, at --tiny on CPU: its chunks are timed, its loss falls
    args = argparse.Namespace(
        arms="reference", compiled=False, tiny=True, batch=0, gpu_rounds=2, gpu_steps=3, gpu_log_every=3,
        tmp=str(tmp_path),
    )  # fmt: skip
    out = gpu.worker_gpu_alone(args)
    assert len(out["ms_per_step"]) == 2 and all(ms > 0 for ms in out["ms_per_step"])
    assert out["params"] == gpt2_param_count(*TINY)
    from bench_parts.loops import LoopArm

    arm = LoopArm("reference", TINY, torch.device("cpu"), None, False, False, 1000)
    ids = torch.randint(0, TINY[3], (4, TINY[2]), generator=torch.Generator().manual_seed(0))
    first = arm.model(ids, ids).item()
    for _ in range(5):
        arm.step(ids)
    assert arm.model(ids, ids).item() < first - 0.1  # lr 1e-4, five steps on one batch


def test_flops_per_token_is_palms_formula():
    # GPT-2 124M at T=1024: 6 N + 12 L T d, by hand
    assert common.flops_per_token(124_439_808, 12, 768, 1024) == 746_638_848 + 113_246_208


def test_an_unknown_arm_exits_2_naming_the_valid_ones(tmp_path):
    p = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--gpu", "--alone", "--tiny", "--arms", "plain,fast"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 2
    assert p.stderr.strip() == "--arms=plain,fast: each must be one of plain, monitor, trainer, reference"
    assert list(tmp_path.iterdir()) == []  # no bench.json half-written


def test_the_real_run_arms_load_and_differ_only_in_the_monitor(tmp_path):
    from bench_parts.real_run import real_overrides

    on, off = (load_config(bench.RECIPE, real_overrides(tmp_path / a, 12, a)) for a in ("on", "off"))
    assert on.liveness.enabled and not off.liveness.enabled
    assert on.train.max_steps == off.train.max_steps == 12 and on.train.log_every == 10  # the recipe's own
    a, b = to_dict(on), to_dict(off)
    for cfg in (a, b):
        cfg["liveness"].pop("enabled"), cfg["alerts"].pop("rules"), cfg["train"].pop("output_dir")
    assert a == b
