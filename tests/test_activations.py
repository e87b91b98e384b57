"""Activation registry, swapping, and save/reload with the activation a checkpoint was saved with."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from transformers.activations import ACT2FN

from reviveformer.activations import (
    activation_from_config,
    hf_activation_name,
    make_activation,
    prepare_config_for_transformers,
    set_activation,
    validate_activation,
)
from reviveformer.errors import ConfigError

TESTS = Path(__file__).parent


@pytest.fixture
def custom_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make tests/custom_act.py importable as `custom_act`, as a user's own module would be."""
    monkeypatch.syspath_prepend(str(TESTS))


def tiny_gpt2(seed: int = 0, activation: str = "gelu_new") -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=16,
        n_head=2,
        n_positions=16,
        vocab_size=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        activation_function=activation,
        initializer_range=0.2,  # wide enough that activations see negative and positive inputs alike
    )
    return GPT2LMHeadModel(cfg).eval()


def logits(model: GPT2LMHeadModel) -> torch.Tensor:
    ids = torch.arange(24).reshape(2, 12) % 64
    with torch.no_grad():
        return model(input_ids=ids).logits


# --- the functions themselves, against formulas written out by hand ---------------------------------------

SELU_SCALE, SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
HAND = {
    "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
    "elu": lambda x: torch.where(x > 0, x, torch.exp(x) - 1),
    "selu": lambda x: SELU_SCALE * torch.where(x > 0, x, SELU_ALPHA * (torch.exp(x) - 1)),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "gelu_new": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x / (1 + torch.exp(-x)),
    "swish": lambda x: x / (1 + torch.exp(-x)),
    "mish": lambda x: x * torch.tanh(torch.log1p(torch.exp(x))),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_registry_matches_hand_formula(name: str) -> None:
    x = torch.linspace(-6, 6, 241, dtype=torch.float64)
    assert torch.allclose(make_activation(name)(x), HAND[name](x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("slope", [0.01, 0.2, 0.0])
def test_leaky_relu_slope(slope: float) -> None:
    x = torch.tensor([-3.0, -0.5, 0.0, 2.0], dtype=torch.float64)
    expected = torch.tensor([-3.0 * slope, -0.5 * slope, 0.0, 2.0], dtype=torch.float64)
    assert torch.equal(make_activation("leaky_relu", slope)(x), expected)


def test_gelu_is_exact_not_tanh() -> None:
    x = torch.tensor([1.0], dtype=torch.float64)
    exact, tanh_approx = 0.8413447460685429, 0.8411919906082768  # x * Phi(x) and the tanh form at x = 1
    assert make_activation("gelu")(x).item() == pytest.approx(exact, abs=1e-12)
    assert make_activation("gelu_new")(x).item() == pytest.approx(tanh_approx, abs=1e-12)


def test_custom_activation_forms(custom_path: None) -> None:
    x = torch.tensor([-2.0, 0.0, 3.0])
    assert torch.equal(make_activation("custom_act:Cube")(x), torch.tensor([-8.0, 0.0, 27.0]))
    sp = make_activation("custom_act:squareplus")
    assert isinstance(sp, torch.nn.Module)
    assert torch.allclose(sp(x), torch.tensor([0.5 * (-2 + 8**0.5), 1.0, 0.5 * (3 + 13**0.5)]))
    assert isinstance(make_activation("custom_act:make_tanh"), torch.nn.Tanh)


# --- errors -------------------------------------------------------------------------------------------------


def test_unknown_name_is_config_error_listing_valid_names() -> None:
    with pytest.raises(ConfigError) as e:
        validate_activation("rleu")
    msg = str(e.value)
    assert "model.activation" in msg and "'rleu'" in msg
    for valid in ("relu", "leaky_relu", "elu", "selu", "gelu", "gelu_new", "silu", "swish", "mish"):
        assert valid in msg
    assert "package.module:attr" in msg


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("no_such_module_xyz:act", "cannot import module 'no_such_module_xyz'"),
        ("custom_act:missing", "has no attribute 'missing'"),
        ("custom_act:NOT_CALLABLE", "not callable"),
        ("custom_act:make_nothing", "not an nn.Module"),
        (":act", "package.module:attr"),
    ],
)
def test_bad_custom_activation(custom_path: None, spec: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate_activation(spec)
    assert "model.activation" in str(e.value) and fragment in str(e.value)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("custom_act:halve_width", "it returned a float32 tensor of shape (2, 3, 4)"),
        ("custom_act:fires", "it returned a bool tensor of shape (2, 3, 8)"),
        ("custom_act:pair", "it returned a tuple"),
        ("custom_act:needs_4d", "raised RuntimeError"),
    ],
)
def test_a_custom_activation_is_probed_before_the_run_starts(
    custom_path: None, spec: str, fragment: str, tmp_path: Path, corpus_file: Path, capsys
) -> None:
    """Issue 18 item 5: a user activation returning the wrong shape or dtype (or failing) is refused by
    `train` with exit 2, naming the plug-in and what it returned, before the run folder is made."""
    from conftest import REPO, tiny_overrides
    from reviveformer.cli import main

    run_dir = tmp_path / "run"
    recipe = str(REPO / "recipes" / "quickstart.yaml")
    code = main(["train", recipe, *tiny_overrides(run_dir, corpus_file, **{"model.activation": spec})])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"model.activation='{spec}'" in err and fragment in err, err
    assert "a floating tensor of its input's shape (a float32 tensor of shape (2, 3, 8) here)" in err
    assert "Traceback" not in err and not run_dir.exists()


def test_a_well_behaved_custom_activation_passes_the_probe(custom_path: None) -> None:
    for spec in ("custom_act:Cube", "custom_act:squareplus", "custom_act:LearnedSlopeTanh"):
        validate_activation(spec)


def test_module_failing_on_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "explodes_on_import.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ConfigError, match=r"cannot import module 'explodes_on_import' \(RuntimeError: boom\)"
    ):
        validate_activation("explodes_on_import:f")


def test_bad_name_leaves_model_untouched() -> None:
    model = tiny_gpt2()
    before = [type(b.mlp.act) for b in model.transformer.h]
    with pytest.raises(ConfigError):
        set_activation(model, "nope")
    assert [type(b.mlp.act) for b in model.transformer.h] == before
    assert model.config.activation_function == "gelu_new"
    assert not hasattr(model.config, "reviveformer_activation")


# --- swapping -----------------------------------------------------------------------------------------------


def test_swap_changes_function_and_matches_hand_mlp() -> None:
    model = tiny_gpt2()
    gelu_logits = logits(model)
    set_activation(model, "relu")
    assert all(isinstance(b.mlp.act, torch.nn.ReLU) for b in model.transformer.h)
    assert model.config.reviveformer_activation == "relu"
    assert model.config.activation_function == "relu"
    assert model.config.reviveformer_leaky_relu_slope == 0.01

    seen: dict[str, torch.Tensor] = {}
    mlp = model.transformer.h[1].mlp
    h = mlp.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0], y=out))
    relu_logits = logits(model)
    h.remove()
    assert not torch.allclose(relu_logits, gelu_logits, atol=1e-3)
    # The MLP recomputed by hand: c_proj(relu(x W_fc + b_fc)), Conv1D weights stored (in, out).
    x = seen["x"]
    pre = x @ mlp.c_fc.weight + mlp.c_fc.bias
    hand = torch.clamp(pre, min=0) @ mlp.c_proj.weight + mlp.c_proj.bias
    assert torch.allclose(seen["y"], hand, rtol=1e-5, atol=1e-6)
    assert (pre < 0).any() and (pre > 0).any()  # relu vs gelu really differ on these inputs


def test_swap_back_restores_outputs() -> None:
    model = tiny_gpt2()
    original = logits(model)
    set_activation(model, "selu")
    assert not torch.equal(logits(model), original)
    set_activation(model, "gelu_new")
    assert torch.equal(logits(model), original)


# --- the name written to config.activation_function -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "slope", "expected"),
    [
        ("relu", 0.01, "relu"),
        ("gelu", 0.01, "gelu"),
        ("gelu_new", 0.01, "gelu_new"),
        ("silu", 0.01, "silu"),
        ("swish", 0.01, "swish"),
        ("mish", 0.01, "mish"),
        ("leaky_relu", 0.01, "leaky_relu"),
        ("leaky_relu", 0.2, "leaky_relu(negative_slope=0.2)"),
        ("elu", 0.01, "elu"),
        ("selu", 0.01, "selu"),
        ("custom_act:Cube", 0.01, "custom_act:Cube"),
    ],
)
def test_hf_activation_name(name: str, slope: float, expected: str) -> None:
    assert hf_activation_name(name, slope) == expected


def test_activation_from_config_without_reviveformer_fields() -> None:
    assert activation_from_config(GPT2Config()) == ("gelu_new", 0.01)
    assert activation_from_config(GPT2Config(activation_function="leaky_relu(negative_slope=0.2)")) == (
        "leaky_relu",
        0.2,
    )


# --- save / reload -----------------------------------------------------------------------------------------

# (name, slope, whether plain transformers rebuilds the same function): written by hand from ACT2FN's table.
ROUND_TRIP = [
    ("relu", 0.01, True),
    ("leaky_relu", 0.01, True),
    ("leaky_relu", 0.2, False),
    ("elu", 0.01, False),
    ("selu", 0.01, False),
    ("gelu", 0.01, True),
    ("gelu_new", 0.01, True),
    ("silu", 0.01, True),
    ("swish", 0.01, True),
    ("mish", 0.01, True),
    ("custom_act:Cube", 0.01, False),
    ("custom_act:squareplus", 0.01, False),
    ("custom_act:make_tanh", 0.01, False),
]


@pytest.mark.parametrize(("name", "slope", "hf_knows"), ROUND_TRIP)
def test_save_reload_round_trip(
    custom_path: None, tmp_path: Path, name: str, slope: float, hf_knows: bool
) -> None:
    model = tiny_gpt2(seed=1)
    set_activation(model, name, slope)
    before = logits(model)
    model.save_pretrained(tmp_path)

    # The reviveformer path: build with a function transformers knows, then install the saved one.
    saved = GPT2Config.from_pretrained(tmp_path)
    prepared, got_name, got_slope = prepare_config_for_transformers(saved)
    assert (got_name, got_slope) == (name, slope)
    assert prepared.activation_function in ACT2FN
    assert saved.activation_function == hf_activation_name(
        name, slope
    )  # the copy was changed, not the original
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path, config=prepared).eval()
    set_activation(reloaded, got_name, got_slope)
    assert torch.equal(logits(reloaded), before)

    # Plain transformers: the same function when it knows it, a loud failure when it does not.
    if hf_knows:
        plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert torch.equal(logits(plain), before)
    else:
        with pytest.raises(KeyError):
            AutoModelForCausalLM.from_pretrained(tmp_path)


# --- learned activations: their parameters survive save -> reload (audit, strip, init_from) ---------------


def _learned_model(activation: str) -> GPT2LMHeadModel:
    """A reviveformer model whose activation parameters are set away from their initial values, per block."""
    from reviveformer.config import ModelConfig
    from reviveformer.model import build_model

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(n_layer=2, n_embd=16, n_head=2, n_positions=16, activation=activation), 64, 0
    )
    with torch.no_grad():
        for i, block in enumerate(model.transformer.h):
            for k, p in enumerate(block.mlp.act.parameters()):
                p.fill_(0.1 + 0.3 * i - 0.05 * k)  # 0.1, 0.4 (prelu); a, b differ per block (custom)
            for b in block.mlp.act.buffers():
                b.fill_(7 + i)
    return model.eval()


def _act_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if ".mlp.act." in k}


@pytest.mark.parametrize("activation", ["prelu", "custom_act:LearnedSlopeTanh"])
def test_learned_activation_parameters_survive_reload(activation, tmp_path, custom_path):
    """load_model (what audit and strip open) and init_from give back the saved parameter values, not fresh
    ones, and the same logits as the model that was saved."""
    from safetensors.torch import load_file

    from reviveformer.config import ModelConfig
    from reviveformer.model import init_from_checkpoint, load_model

    model = _learned_model(activation)
    expected = _act_state(model)
    assert expected and all(v.float().abs().sum() > 0 for v in expected.values())
    model.save_pretrained(tmp_path)
    # what is on disk, read independently of the loader
    on_disk = {k: v for k, v in load_file(tmp_path / "model.safetensors").items() if ".mlp.act." in k}
    assert on_disk.keys() == expected.keys()
    trust = ":" in activation  # a plug-in the folder names loads only with the opt-in; prelu needs none
    for loaded in (
        load_model(str(tmp_path), trust_remote_code=trust),
        init_from_checkpoint(ModelConfig(init_from=str(tmp_path), trust_remote_code=trust)),
    ):
        got = _act_state(loaded)
        assert got.keys() == expected.keys()
        for k in expected:
            assert torch.equal(got[k], on_disk[k]), k
        torch.testing.assert_close(logits(loaded.eval()), logits(model), rtol=0, atol=0)


def test_prelu_reload_matches_plain_transformers(tmp_path):
    """prelu is a name transformers knows: plain from_pretrained builds nn.PReLU and loads its weight, and
    gives the same logits and the same slopes as reviveformer's loader."""
    from reviveformer.model import load_model

    model = _learned_model("prelu")
    model.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ours = load_model(str(tmp_path)).eval()
    assert [b.mlp.act.weight.item() for b in plain.transformer.h] == pytest.approx([0.1, 0.4])
    assert [b.mlp.act.weight.item() for b in ours.transformer.h] == pytest.approx([0.1, 0.4])
    torch.testing.assert_close(logits(ours), logits(plain), rtol=0, atol=0)
    # and the slope is really used: by hand, the MLP of block 0 on a negative input
    x = torch.tensor([-2.0, 3.0])
    assert ours.transformer.h[0].mlp.act(x).tolist() == pytest.approx([-0.2, 3.0])


def test_swapping_to_a_learned_activation_starts_it_fresh(tmp_path):
    """init_from with another activation swaps it: the new module's own initial parameters (prelu: 0.25)."""
    from reviveformer.config import ModelConfig
    from reviveformer.model import init_from_checkpoint

    model = _learned_model("prelu")
    model.save_pretrained(tmp_path)
    relu = init_from_checkpoint(ModelConfig(init_from=str(tmp_path), activation="relu"))
    assert not _act_state(relu)
    # and back: a relu checkpoint swapped to prelu gets PReLU's documented initial slope
    relu.save_pretrained(tmp_path / "relu")
    prelu = init_from_checkpoint(ModelConfig(init_from=str(tmp_path / "relu"), activation="prelu"))
    assert [b.mlp.act.weight.item() for b in prelu.transformer.h] == [0.25, 0.25]
