"""One typed config tree: dataclass schema + YAML recipe + dot-list overrides, merged by `load_config`.

Every field is read somewhere; validation happens in `__post_init__` (where the value enters) and every
OmegaConf or validation failure becomes one `ConfigError` that names the key and what would be valid. One
module per job:

- `schema`: the dataclasses of the sections, each field with its docstring, and their own checks;
- `load`: `load_config` (recipe with its `base:` chain, overrides, one ConfigError), saving, and reading a
  checkpoint's `config.json`;
- `checks`: the pure checks beyond a section's own: a layer's shape, non-finite floats and numbers outside
  their field's range (`reviveformer.ranges`), and the checks across sections (`training_problems`), which
  the run calls with what it reads from disk (`reviveformer.run_checks`);
- `legacy`: the flat revival keys of old configs, moved into their sections.

A recipe argument or `base:` may name a built-in recipe (`reviveformer.builtin_recipes`).

The names below are what the rest of the package imports from `reviveformer.config`.
"""

from __future__ import annotations

from reviveformer.builtin_recipes import resolve_recipe
from reviveformer.config.checks import check_shape, training_problems, value_problems
from reviveformer.config.legacy import LEGACY_REVIVAL_KEYS, upgrade_revival_keys
from reviveformer.config.load import checkpoint_json, load_config, read_recipe, save_config, to_dict
from reviveformer.config.schema import (
    ALLOW_INF,
    SITES,
    AlertRule,
    AlertsConfig,
    Config,
    CorpusConfig,
    DataConfig,
    LivenessConfig,
    ModelConfig,
    RevivalConfig,
    TasksConfig,
    TrainConfig,
    WandbConfig,
    revival_config_class,
)

__all__ = [
    "ALLOW_INF",
    "LEGACY_REVIVAL_KEYS",
    "SITES",
    "AlertRule",
    "AlertsConfig",
    "Config",
    "CorpusConfig",
    "DataConfig",
    "LivenessConfig",
    "ModelConfig",
    "RevivalConfig",
    "TasksConfig",
    "TrainConfig",
    "WandbConfig",
    "check_shape",
    "checkpoint_json",
    "load_config",
    "read_recipe",
    "resolve_recipe",
    "revival_config_class",
    "save_config",
    "to_dict",
    "training_problems",
    "upgrade_revival_keys",
    "value_problems",
]
