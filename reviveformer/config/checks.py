"""The checks of a config beyond each section's own `__post_init__`, all pure (they read no file):

- `check_shape`: a plain recipe/override layer against the schema's shape, before OmegaConf merges it;
- `value_problems`: every number of a config tree that is nan or infinite where that means nothing, or outside
  the sane range its field declares (`reviveformer.ranges`), for the command line and the API alike;
- `training_problems`: what makes a valid config unfit for training, across sections. The run's checks
  (`reviveformer.run_checks`) call it with what they read from disk (an init_from checkpoint's config.json).
"""

from __future__ import annotations

import difflib
import math
import typing
from dataclasses import fields, is_dataclass
from typing import Any

from reviveformer.architectures import MLP_SITE
from reviveformer.config.schema import (
    ALLOW_INF,
    TASK_KINDS,
    Config,
    RevivalConfig,
    revival_config_class,
    show_value,
)
from reviveformer.errors import ConfigError
from reviveformer.ranges import RANGE
from reviveformer.revival import REVIVERS


def training_problems(cfg: Config, saved: dict[str, Any] | None = None) -> list[str]:
    """What makes a config unfit for training although each section is valid on its own: the checks that
    span sections, in the order they are reported. `saved`: model.init_from's config.json (a local
    checkpoint's), whose layers the alert rules are checked against."""
    return [
        *_revival_problems(cfg),
        *_alert_problems(cfg, saved),
        *_window_problems(cfg),
        *_task_problems(cfg),
    ]


def _revival_problems(cfg: Config) -> list[str]:
    live, revival = cfg.liveness, cfg.revival
    if revival.method == "none":
        return []
    if not live.enabled:
        return [
            f"revival.method={revival.method} needs liveness.enabled=true (revival decides from "
            "the liveness counts); set liveness.enabled=true or revival.method=none"
        ]
    if MLP_SITE not in live.sites:
        return [
            f"revival.method={revival.method} needs '{MLP_SITE}' in liveness.sites={list(live.sites)} "
            f"(the dead set is taken there); add {MLP_SITE} or set revival.method=none"
        ]
    return []


def _model_layers(cfg: Config, saved: dict[str, Any] | None) -> tuple[int, str]:
    """(number of layers, the key they come from): the checkpoint's with init_from, else model.n_layer."""
    # GPT-2 says n_layer, the Llama family num_hidden_layers
    n_layer = (
        saved.get("n_layer", saved.get("num_hidden_layers", cfg.model.n_layer))
        if saved
        else cfg.model.n_layer
    )
    n_layer = n_layer if isinstance(n_layer, int) else cfg.model.n_layer  # a broken config.json: the loader's
    return n_layer, f"model.init_from={cfg.model.init_from}" if saved else f"model.n_layer={n_layer}"


def _alert_problems(cfg: Config, saved: dict[str, Any] | None) -> list[str]:
    live, problems = cfg.liveness, []
    watched = list(live.sites) if live.enabled else []
    n_layer, layers_from = _model_layers(cfg, saved)
    for rule in cfg.alerts.rules:
        at = f"alerts.rules[{rule.name}]"
        if not live.enabled:
            problems.append(f"{at} needs liveness.enabled=true (alerts read the liveness metrics)")
        elif rule.site not in watched:
            problems.append(
                f"{at}.site={rule.site} is not watched, so the rule would never fire: liveness.sites="
                f"{watched}; add {rule.site} to liveness.sites or give the rule one of {', '.join(watched)}"
            )
        if rule.action == "revive" and cfg.revival.method == "none":
            problems.append(
                f"{at}.action=revive needs a revival method, but revival.method=none; set revival.method "
                f"to {' or '.join(REVIVERS)} (or your own package.module:Class), or another action "
                "(none, stop)"
            )
        missing = sorted(i for i in rule.layers or [] if i >= n_layer)
        if missing:
            problems.append(
                f"{at}.layers has {missing}, which are not layers of the model: {layers_from} has layers "
                f"0..{n_layer - 1}"
            )
    return problems


def _window_problems(cfg: Config) -> list[str]:
    # Training windows are cut only at a log (epoch-end measurements count in a window of their own), so a
    # window of log_every consecutive steps holds a counted step exactly when sample_every <= log_every.
    live, log_every = cfg.liveness, cfg.train.log_every
    if live.enabled and live.sample_every > log_every:
        return [
            f"liveness.sample_every={live.sample_every} is above train.log_every={log_every}: "
            "a logged liveness window would hold no counted step (and read as all dead); give "
            f"liveness.sample_every <= {log_every} or a larger train.log_every"
        ]
    return []


def _task_problems(cfg: Config) -> list[str]:
    """What a task sequence needs of the other sections, and what only a task sequence allows."""
    tasks, revival, tc = cfg.tasks, cfg.revival, cfg.train
    if tasks.kind == "none":
        if revival.every == "task":
            return [
                "revival.every=task needs a task sequence (tasks.kind, one of "
                f"{', '.join(k for k in TASK_KINDS if k != 'none')}); set revival.every=epoch"
            ]
        return []
    problems = []
    if revival.every == "task" and revival.every_steps:
        problems.append(
            f"revival.every=task and revival.every_steps={revival.every_steps} both say when to revive; give "
            "revival.every_steps=0 to revive at task boundaries, or revival.every=epoch"
        )
    if tasks.steps is not None and tasks.steps % tc.log_every:
        problems.append(
            f"tasks.steps={tasks.steps} must be a multiple of train.log_every={tc.log_every} (the end-of-task "
            "training loss is the mean of the task's last log window)"
        )
    if tc.epochs != 1:
        problems.append(
            f"train.epochs={tc.epochs} does not apply with tasks.kind={tasks.kind}: the run is tasks.count "
            "tasks of tasks.steps (or tasks.epochs) each; leave train.epochs at 1"
        )
    return problems


def value_problems(node: Any, at: str = "") -> list[str]:
    """Every number of a config tree (sections, alert rules, each revival method's section, a plug-in's own)
    that is out of place: a float that is nan or infinite where that means nothing (a section's range check
    such as `>= 0` lets inf through, and `nan < 0` is false), or a number outside the sane range its field
    declares (`reviveformer.ranges.within`). The one check of these for the config loader (the command line),
    `make_reviver` and the transformers callback (the API). Walks the values, so a new field is covered
    without listing it."""
    problems: list[str] = []
    for f in fields(node):
        value, key = getattr(node, f.name), f"{at}.{f.name}" if at else f.name
        if is_dataclass(value):
            problems += value_problems(value, key)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                where = f"{key}[{getattr(item, 'name', i)}]"  # alert rules are named by name, as elsewhere
                if is_dataclass(item):
                    problems += value_problems(item, where)
                elif isinstance(item, float) and not math.isfinite(item):
                    problems.append(f"{where}={item} must be a finite number")
        else:
            problems += _number_problems(value, key, f.metadata)
    return problems


def _number_problems(value: Any, key: str, metadata: Any) -> list[str]:
    """`value_problems` of one field's value, with the field's metadata (ALLOW_INF, RANGE)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return []
    if isinstance(value, float) and not math.isfinite(value):
        if value == math.inf and metadata.get(ALLOW_INF):
            return []
        finite = "a finite number or inf" if metadata.get(ALLOW_INF) else "a finite number"
        return [f"{key}={value} must be {finite}"]
    sane = metadata.get(RANGE)
    if sane is not None and not sane.holds(value):
        return [f"{key}={value} must be in {sane} ({sane.why})"]
    return []


def list_hint(hint: Any) -> tuple[Any, bool] | None:
    """(item type, may be null) of a `list[X]` or `list[X] | None` field, else None."""
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], False
    args = typing.get_args(hint)
    for arg in args:
        if typing.get_origin(arg) is list and type(None) in args:
            return typing.get_args(arg)[0], True
    return None


def check_shape(value: Any, schema: type | None = None, at: str = "", where: str = "config") -> None:
    """Check a plain recipe/override layer against the schema's shape: a mapping where the schema has a
    section, a list where it has a list, known keys only. Scalar types are left to OmegaConf; these are the
    cases where its merge errors name the wrong place (or no place) and not what is valid there."""
    schema = schema or Config
    names = [f.name for f in fields(schema)]
    if not isinstance(value, dict):
        what = f"'{at}'" if at else "the config"
        raise ConfigError(
            f"{where}: {what} must be a mapping of its keys ({', '.join(names)}), not {show_value(value)}"
        )
    hints = typing.get_type_hints(schema)
    for key, sub in value.items():
        full = f"{at}.{key}" if at else str(key)
        if (
            key not in names
            and isinstance(schema, type)
            and issubclass(schema, RevivalConfig)
            and isinstance(sub, dict)
        ):
            continue  # a plug-in method's section: load_config checks it once revival.method is known
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            place = f"'{at}'" if at else "the top level"
            raise ConfigError(
                f"{where}: unknown config key '{full}'{hint} (valid keys at {place}: {', '.join(names)})"
            )
        if is_dataclass(hints[key]):
            # the revival section's full schema holds each method's own section (revival_config_class)
            check_shape(
                sub, revival_config_class() if hints[key] is RevivalConfig else hints[key], full, where
            )
        else:
            _check_list(sub, hints[key], full, where)


def _check_list(value: Any, hint: Any, at: str, where: str) -> None:
    """`check_shape` of a list field (`alerts.rules`, `liveness.sites`, ...): a list, each entry of its kind."""
    listed = list_hint(hint)
    if listed is None or (value is None and listed[1]):
        return
    item, _ = listed
    entry_kind = (
        f"a mapping of {', '.join(f.name for f in fields(item))}"
        if is_dataclass(item)
        else getattr(item, "__name__", str(item))
    )
    if not isinstance(value, list):
        whole = "" if "[" in at else f"; an override gives the whole list: {at}=[...]"
        raise ConfigError(
            f"{where}: '{at}' must be a list (each entry {entry_kind}), not {show_value(value)}{whole}"
        )
    for i, entry in enumerate(value):
        if is_dataclass(item):
            check_shape(entry, item, f"{at}[{i}]", where)
        elif isinstance(entry, (dict, list)):
            raise ConfigError(f"{where}: '{at}[{i}]' must be {entry_kind}, not {show_value(entry)}")
