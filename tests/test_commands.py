"""`audit`, `strip` and `sweep` through the CLI, checked against numbers computed here independently."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_overrides
from reviveformer.cli import main
from reviveformer.config import load_config
from reviveformer.trainer import train

RECIPE = REPO / "recipes" / "quickstart.yaml"


@pytest.fixture(scope="module")
def relu_run(tmp_path_factory, corpus_file) -> Path:
    run_dir = tmp_path_factory.mktemp("cmd") / "relu"
    train(
        load_config(
            RECIPE,
            tiny_overrides(
                run_dir, corpus_file, **{"data.max_tokens": 32 * 8 * 20, "train.epochs": 1, "train.lr": 1e-2}
            ),
        )
    )
    return run_dir


def _independent_mlp_post_counts(final: Path, ids: torch.Tensor, threshold: float) -> list[list[int]]:
    """Fire counts at mlp_post with plain transformers: hook c_fc's output, apply ReLU by hand, count."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(final).eval()
    captured: dict[int, list[torch.Tensor]] = {}
    hooks = [
        block.mlp.c_fc.register_forward_hook(lambda m, i, o, k=k: captured.setdefault(k, []).append(o))
        for k, block in enumerate(model.transformer.h)
    ]
    with torch.no_grad():
        for start in range(0, len(ids), 16):
            model(input_ids=ids[start : start + 16])
    for h in hooks:
        h.remove()
    return [
        (torch.cat(captured[k]).clamp(min=0).abs() > threshold)
        .reshape(-1, captured[k][0].shape[-1])
        .sum(0)
        .tolist()
        for k in sorted(captured)
    ]


@pytest.mark.slow
def test_audit_counts_match_an_independent_count(relu_run, tmp_path, capsys):
    from reviveformer.data import prepare_data
    from reviveformer.saved_model import open_saved_model

    out = tmp_path / "audit"
    assert main(["audit", str(relu_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mlp_post" in printed and "dormant" in printed
    liveness = json.loads((out / "liveness.json").read_text())
    assert set(liveness["sites"]) == {"mlp_pre", "mlp_post", "attn_out"}
    for png in ("frequency_heatmap.png", "dead_ratio_per_layer.png", "activation_histograms.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = open_saved_model(str(relu_run), [])
    ids = prepare_data(saved.cfg.data, saved.cfg.train.seed, tokenizer=saved.tokenizer).val[:]["input_ids"]
    assert liveness["tokens"] == ids.numel()
    expected = _independent_mlp_post_counts(relu_run / "final", ids, liveness["threshold"])
    for layer, counts in enumerate(expected):
        assert liveness["sites"]["mlp_post"][layer]["fire_count"] == counts


def test_audit_gradients_match_a_hand_computation(relu_run, tmp_path, capsys):
    """`audit --gradients`: each unit's GraMa score is the mean over batches of (mean |dL/dW_in| of the unit) /
    (layer mean of that), computed here with plain transformers, autograd and a hand-written next-token loss."""
    from transformers import AutoModelForCausalLM

    from reviveformer.data import prepare_data
    from reviveformer.saved_model import open_saved_model

    out = tmp_path / "audit"
    argv = [
        "audit",
        str(relu_run),
        "--out",
        str(out),
        "--gradients",
        "--grama-tau",
        "0.5",
        "--batch-size",
        "2",
    ]
    assert main(argv) == 0
    assert "GraMa (gradient) dormant at tau=0.5" in capsys.readouterr().out
    liveness = json.loads((out / "liveness.json").read_text())
    grama = liveness["grama"]

    saved = open_saved_model(str(relu_run), [])
    ids = prepare_data(saved.cfg.data, saved.cfg.train.seed, tokenizer=saved.tokenizer).val[:]["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(relu_run / "final").eval()
    weights = [block.mlp.c_fc.weight for block in model.transformer.h]
    sums = [torch.zeros(w.shape[1], dtype=torch.float64) for w in weights]
    batches = list(torch.split(ids, 2))
    peak = [torch.full((w.shape[1],), -math.inf) for w in weights]  # per unit, max pre-activation seen

    def keep_peak(k: int, out: torch.Tensor) -> None:  # a forward hook that returns None keeps the output
        peak[k] = torch.maximum(peak[k], out.detach().flatten(0, 1).amax(0))

    for k, block in enumerate(model.transformer.h):
        block.mlp.c_fc.register_forward_hook(lambda m, i, o, k=k: keep_peak(k, o))
    for x in batches:
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)
        )
        for total, grad in zip(sums, torch.autograd.grad(loss, weights), strict=True):
            per_unit = grad.abs().mean(dim=0).double()
            total += per_unit / per_unit.mean()
    assert grama["batches"] == len(batches) > 1
    for layer, total in enumerate(sums):
        expected = (total / len(batches)).tolist()
        entry = grama["layers"][layer]
        assert entry["scores"] == pytest.approx(expected, rel=1e-4, abs=1e-7)
        assert entry["dormant_units"] == [j for j, v in enumerate(expected) if v <= 0.5]
        # a ReLU unit whose pre-activation is <= 0 on every token passes no gradient to its incoming weights
        silent = (peak[layer] <= 0).nonzero().flatten().tolist()
        assert all(entry["scores"][j] == 0.0 for j in silent)
    assert any(entry["dormant_units"] for entry in grama["layers"])


@pytest.mark.slow
def test_strip_zeroes_exactly_the_rule(relu_run, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "stripped"
    assert (
        main(
            [
                "strip",
                str(relu_run),
                "--out",
                str(out),
                "liveness.dead_frequency=0.05",
                "revival.fraction=0.2",
            ]
        )
        == 0
    )
    report = json.loads((out / "strip.json").read_text())
    liveness = json.loads((out / "liveness.json").read_text())
    before = load_file(relu_run / "final" / "model.safetensors")
    after = load_file(out / "model.safetensors")
    total = 0
    for layer in range(2):
        key = f"transformer.h.{layer}.mlp.c_fc.weight"
        w0, w1 = before[key], after[key]
        dead = liveness["sites"]["mlp_post"][layer]["dead_units"]
        assert report["layers"][layer]["dead_units"] == len(dead)
        changed = w0 != w1
        assert torch.all(w1[changed] == 0)
        for j in range(w0.shape[1]):
            col = w0[:, j]
            if j in dead:
                n = int((col != 0).sum())
                k = min(math.ceil(0.2 * n), int((col < 0).sum()))
                assert int(changed[:, j].sum()) == k, (layer, j)
                # the zeroed ones are the k most negative
                if k:
                    assert col[changed[:, j]].max() <= col[~changed[:, j]].min()
            else:
                assert not changed[:, j].any()
        total += int(changed.sum())
    assert total == report["weights_stripped"] > 0
    assert "weights stripped" in capsys.readouterr().out
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out) is not None


@pytest.mark.slow
def test_sweep_two_activations(tmp_path, corpus_file, capsys):
    out = tmp_path / "sweep"
    args = [
        "sweep",
        str(RECIPE),
        "--activations",
        "relu,gelu",
        "--out",
        str(out),
        *tiny_overrides(
            tmp_path / "unused", corpus_file, **{"data.max_tokens": 32 * 8 * 6, "train.epochs": 1}
        ),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "activation-relu" in printed and "activation-gelu" in printed
    result = json.loads((out / "sweep.json").read_text())
    assert result["grid"] == {"model.activation": ["relu", "gelu"]} and result["seeds"] == [0]
    for name in ("relu", "gelu"):
        label = f"activation-{name}__seed-0"
        run = Path(result["runs"][label])
        assert run == out / label
        assert load_config(run / "config.yaml").model.activation == name
        assert load_config(run / "config.yaml").wandb.job_type == f"activation-{name}"  # one arm per cell
        last = json.loads(sorted((run / "liveness").glob("epoch_*.json"))[-1].read_text())
        assert result["dead_ratio_per_layer"][label]["mlp_post"] == [
            e["dead_ratio"] for e in last["sites"]["mlp_post"]
        ]
    for site in ("mlp_pre", "mlp_post", "attn_out"):
        assert (out / f"dead_ratio_per_layer_{site}.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "compare" / "compare.md").is_file()
    # a chart at another threshold, re-measured on the saved models (the finished runs are kept, not
    # retrained); a huge threshold kills every unit
    assert main([*args, "--threshold", "1000"]) == 0
    assert "is finished; kept" in capsys.readouterr().out
    result = json.loads((out / "sweep.json").read_text())
    assert result["threshold"] == 1000
    assert all(
        r == 1.0 for label in result["runs"] for r in result["dead_ratio_per_layer"][label]["mlp_post"]
    )


@pytest.fixture(scope="module")
def prelu_run(tmp_path_factory, corpus_file) -> Path:
    """A short run with a learned activation: training moves each block's PReLU slope away from 0.25."""
    run_dir = tmp_path_factory.mktemp("cmd") / "prelu"
    train(
        load_config(
            RECIPE,
            tiny_overrides(
                run_dir,
                corpus_file,
                **{
                    "model.activation": "prelu",
                    "data.max_tokens": 32 * 8 * 6,
                    "train.epochs": 1,
                    "train.lr": 1e-2,
                },
            ),
        )
    )
    return run_dir


def _slopes(model_dir: Path) -> list[float]:
    from safetensors.torch import load_file

    weights = load_file(model_dir / "model.safetensors")
    return [weights[f"transformer.h.{i}.mlp.act.weight"].item() for i in range(2)]


@pytest.mark.slow
def test_strip_keeps_learned_activation_and_a_users_tmp_folder(prelu_run, tmp_path, capsys):
    """strip reloads the trained PReLU slopes (not fresh 0.25s) and saves them unchanged; a folder of the
    user's named OUT.tmp is neither used nor removed, and no temporary folder is left."""
    trained = _slopes(prelu_run / "final")
    assert all(abs(s - 0.25) > 1e-4 for s in trained)  # training moved them, so a fresh reload would show
    out = tmp_path / "stripped"
    users = tmp_path / "stripped.tmp"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    assert main(["strip", str(prelu_run), "--out", str(out), "liveness.dead_frequency=0.05"]) == 0
    capsys.readouterr()
    assert _slopes(out) == trained
    assert (users / "notes.txt").read_text() == "mine" and sorted(p.name for p in users.iterdir()) == [
        "notes.txt"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stripped", "stripped.tmp"]
    # audit opens it the same way: its loss is that of the saved model, measured independently here
    audit = tmp_path / "audit"
    assert main(["audit", str(out), "--out", str(audit)]) == 0
    printed = capsys.readouterr().out
    from transformers import AutoModelForCausalLM

    from reviveformer.data import prepare_data
    from reviveformer.saved_model import open_saved_model

    saved = open_saved_model(str(out), [])
    ids = prepare_data(saved.cfg.data, saved.cfg.train.seed, tokenizer=saved.tokenizer).val[:]["input_ids"]
    plain = AutoModelForCausalLM.from_pretrained(out).eval()  # prelu: transformers builds nn.PReLU itself
    with torch.no_grad():
        loss = plain(input_ids=ids, labels=ids).loss.item()
    assert f"loss: {loss:.4f}" in printed


def test_strip_failure_removes_only_its_own_temporary_folder(relu_run, tmp_path, monkeypatch):
    """A failure while the result is written (injected in save_final) leaves neither OUT nor a temporary
    folder, and the user's OUT.tmp stays as it was."""
    import reviveformer.model

    def half_written(model, tokenizer, cfg, out_dir):
        (Path(out_dir) / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full (injected)")

    monkeypatch.setattr(reviveformer.model, "save_final", half_written)
    out = tmp_path / "stripped"
    users = tmp_path / "stripped.tmp"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    with pytest.raises(OSError, match="injected"):
        main(["strip", str(relu_run), "--out", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stripped.tmp"]
    assert (users / "notes.txt").read_text() == "mine"
