"""MLP activations: a name -> module registry, swapping a model's MLP activation, and saving it so it reloads.

Names (design.md, Activations): `relu`, `leaky_relu` (slope `model.leaky_relu_slope`), `elu`, `selu`, `gelu`
(exact erf form), `gelu_new` (GPT-2's tanh approximation), `silu` (alias `swish`), `mish`, `prelu` (a learned
negative slope per block, saved with the weights and restored by `model.load_model`); any other name
that transformers' `ACT2FN` knows (so a checkpoint saved with, say, `gelu_pytorch_tanh` still loads); and
`package.module:attr` for a user's own. Importing that `module:attr` is the only code a config can load.

How a checkpoint remembers its activation: `set_activation` writes `config.reviveformer_activation` and
`config.reviveformer_leaky_relu_slope` (read back by `activation_from_config`), and sets
`config.activation_function` to a name that makes plain transformers rebuild the same function, or, when
transformers has no identical function, to a name it does not know, so that it fails loudly (`KeyError`)
instead of silently computing another function.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2CLS, ACT2FN, NewGELUActivation

from reviveformer import architectures
from reviveformer.errors import ConfigError
from reviveformer.plugins import import_spec

DEFAULT_LEAKY_RELU_SLOPE = 0.01

# name -> factory(leaky_relu_slope) -> a fresh module (one per block, so no parameters are ever shared).
ACTIVATIONS: dict[str, Callable[[float], nn.Module]] = {
    "relu": lambda slope: nn.ReLU(),
    "leaky_relu": lambda slope: nn.LeakyReLU(negative_slope=slope),
    "elu": lambda slope: nn.ELU(),
    "selu": lambda slope: nn.SELU(),
    "gelu": lambda slope: nn.GELU(),  # exact: x * Phi(x) with erf
    # transformers' own class, so a stock GPT-2 checkpoint computes bit-identically; torch's
    # GELU(approximate="tanh") is the same formula but rounds differently.
    "gelu_new": lambda slope: NewGELUActivation(),
    "silu": lambda slope: nn.SiLU(),
    "swish": lambda slope: nn.SiLU(),
    "mish": lambda slope: nn.Mish(),
    # learned: one negative slope per block (init 0.25), saved in the state dict with the block's MLP
    "prelu": lambda slope: nn.PReLU(),
}

# Candidate transformers names for registry entries; each is used only if `_same_function` confirms it.
_HF_CANDIDATES = {
    "relu": "relu",
    "leaky_relu": "leaky_relu",  # transformers builds nn.LeakyReLU() with slope 0.01 only
    "gelu": "gelu",
    "gelu_new": "gelu_new",
    "silu": "silu",
    "swish": "swish",
    "mish": "mish",
    "prelu": "prelu",
}
# Placeholder a loader builds the model with before `set_activation` installs the real function.
PLACEHOLDER_HF_ACTIVATION = "gelu_new"
_LEAKY_SAVED = re.compile(r"leaky_relu\(negative_slope=(?P<slope>[^)]+)\)")
_SHADOW_PREFIX = "reviveformer."


def _unknown_name_error(name: str, key: str) -> ConfigError:
    return ConfigError(
        f"{key}={name!r} is not a known activation; valid names: {', '.join(ACTIVATIONS)} "
        f"(also any transformers activation: {', '.join(sorted(set(ACT2CLS) - set(ACTIVATIONS)))}), "
        "or your own as package.module:attr (an nn.Module class, a function returning a module, "
        "or a tensor -> tensor function)"
    )


class FunctionActivation(nn.Module):
    """Wraps a plain tensor -> tensor function (a user's `module:attr`) as a module."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str) -> None:
        super().__init__()
        self.fn = fn
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


def _import_attr(spec: str, key: str) -> Any:
    obj = import_spec(spec, key, f"{key}={spec!r}: a custom activation must be written package.module:attr")
    attr_path = spec.partition(":")[2]
    if not callable(obj):
        raise ConfigError(
            f"{key}={spec!r}: {attr_path!r} is a {type(obj).__name__}, not callable; give an nn.Module "
            "class, a function returning a module, or a tensor -> tensor function"
        )
    return obj


def _takes_no_arguments(fn: Callable[..., Any]) -> bool:
    try:
        inspect.signature(fn).bind()
    except TypeError:
        return False
    except ValueError:  # builtins without a signature (torch.tanh): treat as tensor -> tensor
        return False
    return True


def _custom_activation(spec: str, key: str) -> nn.Module:
    obj = _import_attr(spec, key)
    if isinstance(obj, nn.Module):
        return copy.deepcopy(obj)  # one copy per block, so blocks never share parameters
    if isinstance(obj, type) or _takes_no_arguments(obj):
        # An nn.Module class or a zero-argument factory.
        try:
            made = obj()
        except Exception as e:
            raise ConfigError(
                f"{key}={spec!r}: calling it with no arguments failed ({type(e).__name__}: {e})"
            ) from None
        if not isinstance(made, nn.Module):
            raise ConfigError(
                f"{key}={spec!r}: calling it returned a {type(made).__name__}, not an nn.Module"
            )
        return made
    return FunctionActivation(obj, spec)


def make_activation(
    name: str, leaky_relu_slope: float = DEFAULT_LEAKY_RELU_SLOPE, *, key: str = "model.activation"
) -> nn.Module:
    """A fresh activation module for `name`; an unknown name or unusable `module:attr` is a ConfigError.

    `key` is the config key named in error messages.
    """
    if not isinstance(name, str) or not name:
        raise _unknown_name_error(str(name), key)
    if not (math.isfinite(leaky_relu_slope) and leaky_relu_slope >= 0):
        raise ConfigError(f"model.leaky_relu_slope={leaky_relu_slope} must be a finite number >= 0")
    if name in ACTIVATIONS:
        return ACTIVATIONS[name](float(leaky_relu_slope))
    if name in ACT2CLS:
        return ACT2FN[name]  # ClassInstantier: a fresh instance per lookup
    if ":" in name:
        return _custom_activation(name, key)
    raise _unknown_name_error(name, key)


def _describe_output(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"a {str(out.dtype).removeprefix('torch.')} tensor of shape {tuple(out.shape)}"
    return f"a {type(out).__name__}"


def _probe(act: nn.Module, spec: str, key: str) -> None:
    """Run a user's activation once on a small float32 tensor shaped like an MLP's (batch, seq, n_inner): what
    it returns must be a floating tensor of the same shape, or the first forward pass would fail deep inside
    the model (or broadcast silently) after the run folder was made."""
    x = torch.linspace(-3.0, 3.0, 2 * 3 * 8).reshape(2, 3, 8)
    want = f"an activation must return a floating tensor of its input's shape ({_describe_output(x)} here)"
    try:
        with torch.no_grad():
            out = act(x)
    except Exception as e:  # the user's code may fail in any way
        raise ConfigError(
            f"{key}={spec!r}: calling it on {_describe_output(x)} raised {type(e).__name__}: {e}; {want}"
        ) from None
    if not (isinstance(out, torch.Tensor) and out.shape == x.shape and out.is_floating_point()):
        raise ConfigError(f"{key}={spec!r}: it returned {_describe_output(out)}; {want}")


def validate_activation(
    name: str, leaky_relu_slope: float = DEFAULT_LEAKY_RELU_SLOPE, *, key: str = "model.activation"
) -> None:
    """Raise ConfigError unless `name` builds a module (imports a `module:attr` to check it) and, for a user's
    `module:attr`, that module maps a probe tensor to a floating tensor of the same shape."""
    act = make_activation(name, leaky_relu_slope, key=key)
    if ":" in name:  # the built-in ones are tested; a user's is run once on a throwaway copy
        _probe(act, name, key)


@lru_cache(maxsize=64)
def _same_function(name: str, slope: float, hf_name: str) -> bool:
    """Whether transformers' `hf_name` computes exactly what reviveformer's `name` computes.

    Checked numerically (bit-equal on a dense grid in float32 and float64) rather than trusted from names,
    so a transformers release that changes a default (leaky_relu's slope, gelu's approximation) stops the
    mapping instead of silently changing a reloaded model.
    """
    if hf_name not in ACT2CLS:
        return False
    ours, theirs = ACTIVATIONS[name](slope), ACT2FN[hf_name]
    for dtype in (torch.float32, torch.float64):
        x = torch.cat([torch.linspace(-40, 40, 16001, dtype=dtype), torch.logspace(-12, 2, 201, dtype=dtype)])
        x = torch.cat([x, -x])
        with torch.no_grad():  # .to(dtype): a learned activation's parameters follow the input's dtype
            if not torch.equal(ours.to(dtype)(x), theirs.to(dtype)(x)):
                return False
    return True


def hf_activation_name(name: str, leaky_relu_slope: float = DEFAULT_LEAKY_RELU_SLOPE) -> str:
    """The value for `config.activation_function`: transformers' name when it rebuilds the same function.

    Otherwise (elu, selu, leaky_relu with a slope other than 0.01, a `module:attr`) a name transformers does
    NOT know. This is deliberate: plain `from_pretrained` then raises a KeyError rather than silently building
    a model with a different activation; reviveformer reads `reviveformer_activation` and loads it correctly.
    """
    slope = float(leaky_relu_slope)
    hf = _HF_CANDIDATES.get(name)
    if hf is not None and _same_function(name, slope, hf):
        return hf
    if name not in ACTIVATIONS and name in ACT2CLS:
        return name  # built by transformers' own class (make_activation), so identical by construction
    if name == "leaky_relu":
        return f"leaky_relu(negative_slope={slope!r})"
    if name in ACT2CLS:
        # transformers knows this name for a different function: shadow it so it cannot be picked up.
        return _SHADOW_PREFIX + name
    return name


def activation_from_config(hf_config: Any) -> tuple[str, float]:
    """(name, leaky_relu_slope) a saved checkpoint should be loaded with.

    Prefers the `reviveformer_activation` fields written by `set_activation`; a checkpoint from elsewhere
    falls back to its `activation_function`.
    """
    slope = getattr(hf_config, "reviveformer_leaky_relu_slope", None)
    slope = DEFAULT_LEAKY_RELU_SLOPE if slope is None else float(slope)
    name = getattr(hf_config, "reviveformer_activation", None)
    if name:
        return str(name), slope
    act = str(getattr(hf_config, "activation_function", PLACEHOLDER_HF_ACTIVATION))
    if m := _LEAKY_SAVED.fullmatch(act):
        return "leaky_relu", float(m.group("slope"))
    if act.startswith(_SHADOW_PREFIX):
        return act[len(_SHADOW_PREFIX) :], slope
    return act, slope


def prepare_config_for_transformers(hf_config: Any) -> tuple[Any, str, float]:
    """A copy of `hf_config` that transformers can build, plus the (name, slope) to install afterwards.

    A model loader builds the model from the copy (`GPT2LMHeadModel.from_pretrained(path, config=copy)`),
    whose `activation_function` is the saved one when transformers knows it and a placeholder otherwise, then
    calls `set_activation(model, name, slope)` (or the swapped-in activation the user asked for). A learned
    activation's parameters (prelu, a user's module) are then loaded into the installed modules by the loader,
    since the modules transformers built are replaced.
    """
    name, slope = activation_from_config(hf_config)
    prepared = copy.deepcopy(hf_config)
    if prepared.activation_function not in ACT2CLS:
        prepared.activation_function = PLACEHOLDER_HF_ACTIVATION
    return prepared, name, slope


def set_activation(model: nn.Module, name: str, leaky_relu_slope: float = DEFAULT_LEAKY_RELU_SLOPE) -> None:
    """Install activation `name` in every block's MLP (the architecture's `set_mlp_activation`) and record it in
    the config.

    Works on a model that already has another activation (a swap). All modules are built before any is
    installed, so a bad name leaves the model untouched.
    """
    arch = architectures.of(model)
    blocks = arch.blocks(model)
    new_acts = [make_activation(name, leaky_relu_slope) for _ in blocks]
    for block, act in zip(blocks, new_acts, strict=True):
        arch.set_mlp_activation(block, act)
    model.config.reviveformer_activation = name
    model.config.reviveformer_leaky_relu_slope = float(leaky_relu_slope)
    model.config.activation_function = hf_activation_name(name, leaky_relu_slope)
