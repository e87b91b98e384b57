"""The Llama-family gated MLP (reviveformer.architectures.llama) beside GPT-2: liveness counts of `audit` on tiny saved Llama,
Qwen2 and Mistral folders against an independent count, ReDo/GraMa edits of gated units, and strip's refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reviveformer import architectures
from reviveformer.architectures import llama
from reviveformer.cli import main
from reviveformer.data import train_bpe_tokenizer

VOCAB = 320
"""The models' vocabulary: above the byte-level tokenizer's 256 bytes plus its end-of-text token."""
THRESHOLD = 1e-3


def _tiny(kind: str):
    """A tiny randomly initialised model of `kind`, built offline."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    config_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
    }[kind]
    torch.manual_seed(0)
    config = config_cls(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
    )
    return model_cls(config)


@pytest.fixture(scope="module")
def tokenizer(corpus_file):
    return train_bpe_tokenizer([corpus_file.read_text()], VOCAB - 32)


def _saved(kind: str, folder: Path, tokenizer) -> Path:
    model = _tiny(kind)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _data_overrides(corpus: Path) -> list[str]:
    return [
        "data.source=text",
        f"data.path={corpus}",
        "data.block_size=32",
        f"liveness.threshold={THRESHOLD}",
    ]


def _independent_counts(folder: Path, ids: torch.Tensor) -> list[np.ndarray]:
    """Fire counts at mlp_post with plain transformers: hook down_proj's input (the product act(gate) * up),
    count |a| > threshold in numpy."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    captured: dict[int, list[np.ndarray]] = {}
    hooks = [
        layer.mlp.down_proj.register_forward_hook(
            lambda m, i, o, k=k: captured.setdefault(k, []).append(i[0].detach().numpy())
        )
        for k, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        for start in range(0, len(ids), 16):
            model(input_ids=ids[start : start + 16])
    for h in hooks:
        h.remove()
    return [
        (np.abs(np.concatenate(captured[k]).reshape(-1, 128)) > THRESHOLD).sum(0) for k in sorted(captured)
    ]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_audit_counts_gated_units_like_an_independent_count(kind, tokenizer, corpus_file, tmp_path, capsys):
    from reviveformer.data import prepare_data
    from reviveformer.saved_model import open_saved_model

    folder = _saved(kind, tmp_path / kind, tokenizer)
    overrides = _data_overrides(corpus_file)
    out = tmp_path / "audit"
    assert main(["audit", str(folder), "--out", str(out), *overrides]) == 0
    liveness = json.loads((out / "liveness.json").read_text())
    assert set(liveness["sites"]) == {"mlp_pre", "mlp_post", "attn_out"}
    saved = open_saved_model(str(folder), overrides)
    ids = prepare_data(saved.cfg.data, saved.cfg.train.seed, tokenizer=saved.tokenizer).val[:]["input_ids"]
    assert liveness["tokens"] == ids.numel()
    expected = _independent_counts(folder, ids)
    for layer, counts in enumerate(expected):
        post = liveness["sites"]["mlp_post"][layer]
        assert post["units"] == 128
        assert post["fire_count"] == counts.tolist()
        assert liveness["sites"]["attn_out"][layer]["units"] == 64


def test_sites_and_unit_layout_of_a_gated_mlp():
    model = _tiny("llama")
    assert architectures.of(model) is llama
    mlp = llama.mlps(model)[0]
    assert architectures.of(mlp) is llama  # an MLP alone (revival holds only those) finds its architecture
    gate, up = llama.incoming_weights(mlp)
    (down,) = llama.outgoing_weights(mlp)
    assert torch.equal(gate.view[5], mlp.gate_proj.weight[5, :])
    assert torch.equal(up.view[5], mlp.up_proj.weight[5, :])
    assert torch.equal(down.view[5], mlp.down_proj.weight[:, 5])
    # two incoming rows of 64 and one outgoing column of 64, no bias (mlp_bias is off)
    assert llama.per_unit_parameters(mlp) == 3 * 64


def _stepped(kind: str = "llama"):
    """A tiny model after one AdamW step, so every entry has optimizer state."""
    model = _tiny(kind)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    return model, opt


def _changed(before: torch.Tensor, after: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(i) for i in (before != after).nonzero().tolist()}


@pytest.mark.parametrize("method", ["redo", "grama"])
def test_reinit_changes_exactly_the_gated_units_entries(method):
    from reviveformer.liveness import LivenessMonitor
    from reviveformer.liveness.options import LivenessConfig
    from reviveformer.revival.grama import GraMa
    from reviveformer.revival.redo import ReDo

    model, opt = _stepped()
    mlp = model.model.layers[1].mlp
    units = [3, 77]
    names = ("gate_proj.weight", "up_proj.weight", "down_proj.weight")
    params = {n: p for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in params.items()}
    state_before = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in params.items()}
    with LivenessMonitor(model, LivenessConfig()) as monitor:
        model(input_ids=torch.zeros(1, 8, dtype=torch.long))
        report = monitor.report()
    if method == "redo":
        # the scores set by hand: only the chosen units of layer 1 are dormant (score 0 <= tau)
        reviver = ReDo(tau=0.0)
        entry = next(e for e in report.sites["mlp_post"] if e.layer == 1)
        entry.dormancy[:] = [1.0] * len(entry.dormancy)
        for j in units:
            entry.dormancy[j] = 0.0
        for e in report.sites["mlp_post"]:
            if e.layer == 0:
                e.dormancy[:] = [1.0] * len(e.dormancy)
    else:
        reviver = GraMa(tau=0.0)
        # gradients: layer 0 everywhere, layer 1 everywhere but the chosen units' two incoming rows
        opt.zero_grad()
        ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
        model(input_ids=ids, labels=ids).loss.backward()
        for w in (mlp.gate_proj.weight, mlp.up_proj.weight):
            w.grad[units] = 0
        reviver.before_optimizer_step(model)
        assert reviver.window_scores(model)[1][units].tolist() == [0.0, 0.0]
    reviver.revive(model, report, opt)
    std = model.config.initializer_range
    for n, p in params.items():
        changed = _changed(before[n], p.detach())
        state_changed = {
            k: _changed(state_before[n][k], opt.state[p][k])
            for k in ("exp_avg", "exp_avg_sq")
            if k in opt.state[p]
        }
        if n.startswith("model.layers.1.mlp.") and n.endswith(names[:2]):
            rows = {(j, c) for j in units for c in range(64)}
            assert changed == rows  # a fresh draw differs from the old weight everywhere
            assert all(s <= rows for s in state_changed.values())
            assert (opt.state[p]["exp_avg"][units] == 0).all() and (
                opt.state[p]["exp_avg_sq"][units] == 0
            ).all()
            assert p[units].std().item() == pytest.approx(std, rel=0.3)
        elif n == "model.layers.1.mlp.down_proj.weight":
            assert changed <= {(r, j) for r in range(64) for j in units}
            assert (p[:, units] == 0).all()
            assert (opt.state[p]["exp_avg"][:, units] == 0).all()
            assert all(s <= {(r, j) for r in range(64) for j in units} for s in state_changed.values())
        else:
            assert not changed, n
            assert not any(state_changed.values()), n


def test_strip_refuses_a_gated_mlp_with_exit_2(tokenizer, corpus_file, tmp_path, capsys):
    folder = _saved("llama", tmp_path / "llama", tokenizer)
    out = tmp_path / "stripped"
    assert main(["strip", str(folder), "--out", str(out), *_data_overrides(corpus_file)]) == 2
    err = capsys.readouterr().err
    assert "synaptic stripping does not apply" in err and "gated MLP" in err and "Traceback" not in err
    assert not out.exists()


def _train_args(folder: Path, run_dir: Path, corpus: Path, *extra: str) -> list[str]:
    from tests.conftest import tiny_overrides

    return [
        "train",
        "recipes/quickstart.yaml",
        *tiny_overrides(run_dir, corpus),
        f"model.init_from={folder}",
        "data.max_tokens=2048",
        "train.max_steps=6",
        *extra,
    ]


def test_train_fine_tunes_a_llama_folder_with_redo(tokenizer, corpus_file, tmp_path):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from reviveformer.config import load_config
    from reviveformer.model import model_summary

    folder = _saved("llama", tmp_path / "llama", tokenizer)
    run_dir = tmp_path / "run"
    # the quickstart recipe asks for relu; silu is the checkpoint's own, so no swap
    args = _train_args(folder, run_dir, corpus_file, "model.activation=silu", "model.dropout=0.1")
    assert main([*args, "revival.method=redo"]) == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("liveness/mlp_post/dead_ratio" in r for r in rows)
    final = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    assert isinstance(final, LlamaForCausalLM)
    assert model_summary(final).startswith(
        "Llama 2 layers x 64 wide, 2 heads, MLP 128 (silu, gated), vocab 320"
    )
    assert final.config.attention_dropout == 0.1  # model.dropout reached the saved model
    recorded = load_config(run_dir / "config.yaml").model
    assert (recorded.n_layer, recorded.n_embd, recorded.n_inner, recorded.n_positions) == (2, 64, 128, 64)
    assert (recorded.activation, recorded.dropout, recorded.init_from) == ("silu", 0.1, str(folder))


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["revival.method=synaptic_stripping"], "synaptic stripping is defined for units with one incoming"),
        (["model.activation=relu"], "swapping a gated MLP's activation is not supported yet"),
    ],
)
def test_train_refuses_what_a_gated_mlp_cannot_do_with_exit_2(
    extra, says, tokenizer, corpus_file, tmp_path, capsys
):
    folder = _saved("llama", tmp_path / "llama", tokenizer)
    run_dir = tmp_path / "run"
    assert main(_train_args(folder, run_dir, corpus_file, *extra)) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not run_dir.exists()  # refused before the run directory is made
