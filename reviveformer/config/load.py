"""Loading a config: schema defaults <- YAML recipe (with its `base:` chain) <- dot-list overrides, merged by
`load_config`, which turns every OmegaConf or validation failure into one `ConfigError` naming the key and
what would be valid there. Saving (`to_dict`, `save_config`) and reading a checkpoint's `config.json`
(`checkpoint_json`) live here too: they are the config's own files."""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from reviveformer.builtin_recipes import builtin, builtin_names, resolve_recipe
from reviveformer.config.checks import check_shape, value_problems
from reviveformer.config.legacy import upgrade_revival_keys
from reviveformer.config.schema import AlertRule, Config, RevivalConfig, revival_config_class
from reviveformer.errors import ConfigError
from reviveformer.revival import reviver_class


def load_config(
    recipe: str | Path | DictConfig | dict | None = None, overrides: list[str] | None = None
) -> Config:
    """Schema defaults <- recipe <- dot-list overrides, validated section by section (and every number
    finite and in its range); any problem is one ConfigError. The checks across sections are the run's
    (`reviveformer.run_checks`): `audit` and `strip`, which only measure a saved model, load without them."""
    layers = _layers(recipe, overrides)
    plugin = _plugin(layers)
    schema = OmegaConf.structured(Config)
    if plugin is not None:
        # a user's own method: its section revival.<name> joins the schema (imported only because it is named)
        schema.revival = revival_config_class(plugin)()
    merged = schema
    for where, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as e:
            raise ConfigError(_describe(e, where, plugin)) from None
        except TypeError as e:  # a container shape check_shape did not foresee
            raise ConfigError(f"{where}: {e}") from None
    try:
        cfg = OmegaConf.to_object(merged)
    except ValueError as e:
        raise ConfigError(f"invalid config: {e}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, "config", plugin)) from None
    assert isinstance(cfg, Config)
    problems = value_problems(cfg)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    return cfg


def _layers(
    recipe: str | Path | DictConfig | dict | None, overrides: list[str] | None
) -> list[tuple[str, Any]]:
    """(where, layer) of the recipe (a file, or a config given in code) and of each override, in merge order,
    each with its legacy keys moved and its shape checked."""
    layers: list[tuple[str, Any]] = []
    if isinstance(recipe, (str, Path)):
        layers.append((f"recipe {recipe}", read_recipe(recipe)))
    elif recipe is not None:
        plain = OmegaConf.to_container(recipe) if isinstance(recipe, DictConfig) else copy.deepcopy(recipe)
        upgrade_revival_keys(plain, "config")
        check_shape(plain)
        layers.append(("config", OmegaConf.create(plain)))
    for item in overrides or []:
        layers.append((f"override '{item}'", _parse_override(item)))
    return layers


def _plugin(layers: list[tuple[str, Any]]) -> type | None:
    """The Reviver class of a user's own method when the last `revival.method` given names one."""
    methods = [m for _, layer in layers if (m := OmegaConf.select(layer, "revival.method")) is not None]
    method = reviver_class(str(methods[-1])) if methods else None
    if method is None or method.name in revival_config_class().__dataclass_fields__:
        return None
    return method


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> DictConfig:
    """A recipe file (or a built-in recipe's name: `quickstart`) as a DictConfig; a missing file or invalid
    YAML is a ConfigError naming the file.

    A recipe may start from another with `base: other.yaml` (a path relative to the recipe's folder, else a
    built-in recipe's name): the base is read first and this recipe's keys win, so an arm holds only what
    differs from its base."""
    path = resolve_recipe(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]} ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"recipe {path} must be a mapping of sections (model, data, train, ...), not {type(data).__name__}"
        )
    base = data.pop("base", None)
    upgrade_revival_keys(data, f"recipe {path}")
    check_shape(data, where=f"recipe {path}")
    if base is None:
        return OmegaConf.create(data)
    base_path = (path.parent / str(base)).resolve()
    if not base_path.is_file():
        base_path = builtin(str(base)) or base_path
    if not base_path.is_file():
        # the missing file alone does not say which recipe to fix when several share a base
        raise ConfigError(
            f"recipe {path}: its base: {base} names {base_path}, which does not exist (a base path is "
            f"relative to the recipe's own folder, or a built-in recipe's name: {', '.join(builtin_names())})"
        )
    if base_path in _seen:
        raise ConfigError(f"recipe {path}: base: {base} makes a cycle ({' -> '.join(p.name for p in _seen)})")
    parent = read_recipe(base_path, (*_seen, path.resolve()))
    try:
        return OmegaConf.merge(parent, OmegaConf.create(data))
    except OmegaConfBaseException as e:
        raise ConfigError(f"recipe {path}: {str(e).splitlines()[0]}") from None


def _parse_override(item: str) -> DictConfig:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value (for example train.lr=3e-4)")
    try:
        layer = OmegaConf.from_dotlist([item])
    except OmegaConfBaseException as e:
        raise ConfigError(f"override '{item}': {str(e).splitlines()[0]}") from None
    except yaml.YAMLError as e:  # the value is read as YAML: an unclosed [ or { ends here
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(
            f"override '{item}': the value is not valid YAML ({problem}); close its brackets, or "
            "quote it to give a plain string (key='value')"
        ) from None
    plain = upgrade_revival_keys(OmegaConf.to_container(layer), f"override '{item}'")
    check_shape(plain, where=f"override '{item}'")
    return OmegaConf.create(plain)


def _suggest(key: str, schema_node: Any) -> str:
    names = [f.name for f in fields(schema_node)] if is_dataclass(schema_node) else []
    close = difflib.get_close_matches(key, names, n=1)
    valid = f" (valid keys: {', '.join(names)})" if names else ""
    return f"; did you mean '{close[0]}'?" if close else valid


def _schema_at(full_key: str, plugin: type | None = None) -> Any:
    node: Any = Config
    for part in full_key.split(".")[:-1]:
        part = part.split("[")[0]
        by_name = {f.name: f for f in fields(node)} if is_dataclass(node) else {}
        if part not in by_name:
            return None
        f = by_name[part]
        node = f.default_factory() if f.default_factory is not field().default_factory else f.type  # type: ignore[misc]
        if isinstance(node, list):  # alerts.rules
            node = AlertRule
        elif isinstance(node, RevivalConfig):  # with the section of a user's method named by revival.method
            node = revival_config_class(plugin)
        elif not is_dataclass(node):
            return None
    return node


def _describe(err: OmegaConfBaseException, where: str, plugin: type | None = None) -> str:
    key = getattr(err, "full_key", None) or ""
    msg = str(err).split("\n")[0]
    if isinstance(err, ConfigKeyError) and key:
        leaf = key.split(".")[-1]
        return f"{where}: unknown config key '{key}'{_suggest(leaf, _schema_at(key, plugin))}"
    if isinstance(err, ValidationError) and key:
        return f"{where}: bad value for '{key}': {msg}"
    return f"{where}: {msg}" + (f" (key '{key}')" if key else "")


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of a config (for YAML files and W&B)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def checkpoint_json(init_from: str) -> dict[str, Any] | None:
    """The `config.json` of a local checkpoint folder (None for a hub name, a missing or unreadable one: the
    model loader reports those)."""
    path = Path(init_from).expanduser() / "config.json"
    try:
        saved = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None
