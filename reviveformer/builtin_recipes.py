"""The built-in recipes: YAML files shipped inside the package (`reviveformer/recipes/`, which the checkout's
top-level `recipes/` links to), so that an installed package runs its own examples from any folder
(`reviveformer train quickstart`). A recipe argument or a `base:` names a file first; a bare name (no folder)
that is no file stands for the built-in recipe of that name. Each recipe's first line is a comment saying what it
is for: `reviveformer recipes` lists it."""

from __future__ import annotations

from pathlib import Path

from reviveformer.errors import ConfigError

BUILTIN_DIR = Path(__file__).resolve().parent / "recipes"
LAUNCH_CONFIG_DIR = BUILTIN_DIR / "accelerate"


def builtin_names() -> list[str]:
    """The built-in recipes' names (`quickstart`, ...), sorted."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def builtin(name: str) -> Path | None:
    """The built-in recipe that a bare name stands for (`quickstart` or `quickstart.yaml`); None for a name
    with a folder in it or one that no built-in recipe has."""
    if not name or "/" in name or "\\" in name:
        return None
    path = BUILTIN_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    return path if path.is_file() else None


def resolve_recipe(given: str | Path) -> Path:
    """The file a recipe argument names: the file itself when it exists (wherever it is), else the built-in
    recipe of that name; neither is a ConfigError that lists the built-in names."""
    path = Path(given)
    if path.is_file():
        return path
    found = builtin(str(given))
    if found is not None:
        return found
    raise ConfigError(
        f"recipe {given} does not exist; give a YAML file, or the name of a built-in recipe "
        f"({', '.join(builtin_names())}; `reviveformer recipes` says what each is for)"
    )


def purpose(path: Path) -> str:
    """A recipe's one-line purpose: its first line, a comment ('' when it has none)."""
    first = path.read_text().split("\n", 1)[0]
    return first[1:].strip() if first.startswith("#") else ""
