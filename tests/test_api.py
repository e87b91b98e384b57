"""The public API (docs/api.md): `reviveformer.__all__` is exactly the documented list and every name has its own
docstring; the monitor leaves a model exactly as it found it, and counts a model the user wrapped themselves
(`accelerator.prepare`, `torch.compile`) as an independent count (hooks on the MLP activation, numpy) does."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from hf_common import N_LAYER, tiny_gpt2

import reviveformer
from reviveformer import LivenessConfig, LivenessMonitor, make_reviver

API_MD = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def documented_names() -> list[str]:
    section = API_MD.read_text().split("## Names", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `(\w+)`", section, flags=re.M)


def test_all_is_exactly_the_documented_list() -> None:
    names = documented_names()
    assert len(names) >= 8
    assert sorted(reviveformer.__all__) == sorted(names)
    star: dict = {}
    exec("from reviveformer import *", star)
    assert sorted(k for k in star if not k.startswith("__")) == sorted(names)


@pytest.mark.parametrize("name", documented_names())
def test_every_public_name_has_its_own_docstring(name) -> None:
    obj = getattr(reviveformer, name)
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else obj.__doc__
    # a dataclass without a docstring gets a generated "Name(field: type = ...)" one: not a contract
    assert doc and len(doc.split()) >= 5 and not doc.startswith(f"{name}("), name


def test_private_names_stay_private() -> None:
    with pytest.raises(AttributeError, match="no attribute 'REVIVERS'"):
        reviveformer.REVIVERS  # noqa: B018


def test_make_reviver_names_what_is_valid() -> None:
    assert make_reviver("redo", tau=0.25).tau == 0.25
    with pytest.raises(ValueError, match="synaptic_stripping"):
        make_reviver("none")
    with pytest.raises(ValueError, match=r"options are \['tau'\]"):
        make_reviver("grama", fraction=0.1)


def ids(seed: int) -> torch.Tensor:
    return torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(seed))


def test_close_leaves_the_model_unchanged() -> None:
    model = tiny_gpt2().eval()
    classes = [type(m) for m in model.modules()]
    keys = list(model.state_dict())
    with torch.no_grad():
        before = model(input_ids=ids(0)).logits
        monitor = LivenessMonitor(model, LivenessConfig())
        model(input_ids=ids(1))
        assert monitor.report().tokens == 64
        monitor.close()
        after = model(input_ids=ids(0)).logits
    assert [type(m) for m in model.modules()] == classes
    assert list(model.state_dict()) == keys
    assert torch.equal(before, after)
    assert not any(hasattr(m, "_rf_probe") for m in model.modules())


def independent_counts(model, batches) -> tuple[list[int], list[list[int]]]:
    """Tokens and fire counts per layer at mlp_post, from forward hooks on the (unwrapped) model's activations."""
    acts: dict[int, list[np.ndarray]] = {i: [] for i in range(N_LAYER)}
    hooks = [
        b.mlp.act.register_forward_hook(lambda m, a, out, i=i: acts[i].append(out.detach().double().numpy()))
        for i, b in enumerate(model.transformer.h)
    ]
    batches()
    for h in hooks:
        h.remove()
    x = {i: np.concatenate([a.reshape(-1, a.shape[-1]) for a in v]) for i, v in acts.items()}
    return [x[i].shape[0] for i in range(N_LAYER)], [
        (np.abs(x[i]) > 1e-3).sum(0).tolist() for i in range(N_LAYER)
    ]


@pytest.mark.parametrize("wrap", ["accelerate", "compile"])
def test_counts_on_a_model_the_user_wrapped(wrap) -> None:
    model = tiny_gpt2()
    if wrap == "accelerate":
        acc = Accelerator(cpu=True)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        wrapped, opt = acc.prepare(model, opt)
    else:
        # aot_eager: dynamo traces the counting into the graph without a C++ compile of the whole model
        wrapped, opt = (
            torch.compile(model, backend="aot_eager"),
            torch.optim.AdamW(model.parameters(), lr=1e-3),
        )
        wrapped(input_ids=ids(9))  # compiled before the monitor attaches: it must still count
    monitor = LivenessMonitor(wrapped, LivenessConfig(sites=["mlp_post"]))

    def train() -> None:
        for s in range(3):
            x = ids(s)
            wrapped(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()

    tokens, fire = independent_counts(model, train)
    counts = monitor.counts()
    assert counts.tokens["mlp_post"].tolist() == tokens == [3 * 64] * N_LAYER
    assert counts.fire_count["mlp_post"].tolist() == fire
    monitor.close()
    assert type(model.transformer.h[0].mlp.act) is torch.nn.ReLU
