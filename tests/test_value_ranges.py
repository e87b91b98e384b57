"""Every strength, rate and scale has a sane range (issue 27 item 9; docs/design.md, "Value ranges"): a value
just inside is accepted, one just outside is refused naming the key and the range, by the one check that the
config loader (the command line), `make_reviver` and the transformers callback share (issue 27 item 10)."""

from __future__ import annotations

import math

import pytest

from conftest import REPO, tiny_overrides
from reviveformer.config import load_config
from reviveformer.errors import ConfigError

# (key, low, high, low open, high open, the range as messages write it): the design.md table, written out by
# hand so that the test does not read the ranges from the code it checks
RANGES = [
    ("train.lr", 1e-9, 1.0, False, False, "[1e-09, 1]"),
    ("train.weight_decay", 0.0, 10.0, False, False, "[0, 10]"),
    ("train.adam_eps", 1e-20, 1.0, False, False, "[1e-20, 1]"),
    ("train.seed", 0, 2**32 - 1, False, False, "[0, 4294967295]"),
    ("model.initializer_range", 0.0, 1.0, True, False, "(0, 1]"),
    ("model.leaky_relu_slope", 0.0, 1.0, False, False, "[0, 1]"),
    ("liveness.threshold", 0.0, 1e3, False, False, "[0, 1000]"),
    ("liveness.tau", 0.0, 1.0, False, True, "[0, 1)"),
    ("liveness.histogram_bins", 2, 511, False, False, "[2, 511]"),
    ("revival.redo.tau", 0.0, 1.0, False, True, "[0, 1)"),
    ("revival.grama.tau", 0.0, 1.0, False, True, "[0, 1)"),
    ("revival.l2_init.strength", 0.0, 1e3, True, False, "(0, 1000]"),
    ("revival.shrink_perturb.perturb", 0.0, 1.0, False, False, "[0, 1]"),
]


def _step(end: float | int, direction: float) -> float | int:
    """The next value past `end` in `direction` (+inf or -inf): the next integer, or the next float."""
    if isinstance(end, int):
        return end + (1 if direction > 0 else -1)
    return math.nextafter(end, direction)


def _refusal(key: str, value: float | int) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[f"{key}={value!r}"])
    return str(err.value)


@pytest.mark.parametrize(
    ("key", "low", "high", "low_open", "high_open", "shown"), RANGES, ids=[r[0] for r in RANGES]
)
def test_each_range_holds_its_ends_and_refuses_past_them(key, low, high, low_open, high_open, shown):
    """Just inside each end loads; just past it is a ConfigError naming the key and value, and past the high
    end (new in every one of these ranges) the range as well."""
    inside_high = _step(high, -math.inf) if high_open else high
    inside_low = _step(low, math.inf) if low_open else low
    for value in (inside_low, inside_high):
        cfg = load_config(overrides=[f"{key}={value!r}"])
        leaf = cfg
        for part in key.split("."):
            leaf = getattr(leaf, part)
        assert leaf == value, key
    past_high = high if high_open else _step(high, math.inf)
    message = _refusal(key, past_high)
    assert f"{key}={past_high!r}" in message and f"must be in {shown}" in message, message
    past_low = low if low_open else _step(low, -math.inf)
    assert f"{key}={past_low!r}" in _refusal(key, past_low)


def test_every_declared_range_is_in_the_table():
    """A range declared on any field (`reviveformer.ranges.within`) is one of the table's, with the same
    ends, and design.md's table of value ranges has a row for it: a new range gets its test and its doc."""
    import typing
    from dataclasses import fields, is_dataclass

    from reviveformer.config import Config, RevivalConfig, revival_config_class
    from reviveformer.ranges import RANGE

    def declared(schema: type, at: str = "") -> dict[str, str]:
        hints, found = typing.get_type_hints(schema), {}
        for f in fields(schema):
            hint, key = hints[f.name], f"{at}.{f.name}" if at else f.name
            hint = revival_config_class() if hint is RevivalConfig else hint
            if is_dataclass(hint):
                found |= declared(hint, key)
            elif RANGE in f.metadata:
                found[key] = str(f.metadata[RANGE])
        return found

    assert declared(Config) == {key: shown for key, *_, shown in RANGES}
    design = (REPO / "docs" / "design.md").read_text()
    table = design[design.index("Value ranges.") :].split("\n\n")[1]
    assert [key for key, *_ in RANGES if f"`{key}`" not in table] == []


def test_lr_times_weight_decay_must_stay_below_one():
    """Each inside its own range, but AdamW would multiply every weight by 1 - lr * weight_decay = 0."""
    load_config(overrides=["train.lr=0.5", "train.weight_decay=1.9"])
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["train.lr=0.5", "train.weight_decay=2"])
    assert "train.lr=0.5 and weight_decay=2.0: lr * weight_decay must be < 1" in str(err.value)


def test_cli_refuses_an_absurd_strength_before_writing(tmp_path, corpus_file, capsys):
    """The issue's case: `reviveformer train ... revival.l2_init.strength=1e30` trained with exit 0 and learned
    nothing; now it is exit 2 at config load, naming the key and the range, with nothing written."""
    from reviveformer.cli import main

    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    overrides = [*tiny_overrides(run_dir, corpus_file), f"data.cache_dir={cache}"]
    args = ["train", str(REPO / "recipes" / "quickstart.yaml"), *overrides]
    code = main([*args, "revival.method=l2_init", "revival.l2_init.strength=1e30"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "revival.l2_init.strength=1e+30 must be in (0, 1000]" in err and "Traceback" not in err
    assert not run_dir.exists() and not cache.exists()


def test_api_and_callback_refuse_what_the_cli_refuses():
    """make_reviver and ReviveformerCallback raise a ValueError with the config loader's own words, for a
    revival option and for the callback's liveness settings."""
    from reviveformer import LivenessConfig, make_reviver
    from reviveformer.integrations.transformers import ReviveformerCallback

    cli = _refusal("revival.l2_init.strength", 1e30).removeprefix("invalid config: ")
    with pytest.raises(ValueError) as api:
        make_reviver("l2_init", strength=1e30)
    with pytest.raises(ValueError) as callback:
        ReviveformerCallback(revival="l2_init", revival_options={"strength": 1e30})
    assert str(api.value) == str(callback.value) == cli
    cli = _refusal("liveness.threshold", 1e4).removeprefix("invalid config: ")
    with pytest.raises(ValueError) as callback:
        ReviveformerCallback(liveness=LivenessConfig(threshold=1e4))
    assert str(callback.value) == cli
    make_reviver("l2_init", strength=1e-1)  # the literature's strongest: accepted
