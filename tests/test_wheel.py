"""Issue 29, part 1: the package as a user installs it. The wheel is built from the checkout, installed into a fresh
virtual environment (no network: the dependencies are those of the Python running the tests, reached through a
.pth file), and run from a folder outside the checkout: a built-in recipe by name, the recipe list, the public
API. Built once for the module; each test is one short process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO, tiny_overrides


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # without PYTHONPATH: the checkout must not be importable, only the installed package
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh environment, its site-packages) with the wheel of this checkout installed."""
    root = tmp_path_factory.mktemp("wheel")
    # a copy of what the wheel is built from, so that the build's own folders (build/, *.egg-info) stay out
    # of the checkout
    src = root / "src"
    shutil.copytree(REPO / "reviveformer", src / "reviveformer", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = _run(
        [*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index", "-w", "dist"], root
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (root / "dist").glob("reviveformer-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root
        ).stdout.strip()
    )
    # the dependencies already on this machine: this Python's own site-packages, after the environment's own
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    install = _run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], root)
    assert install.returncode == 0, install.stdout + install.stderr
    return venv, site


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A folder outside the checkout, where the user is."""
    assert REPO not in tmp_path.parents
    return tmp_path


def test_the_wheel_holds_the_recipes_and_launch_configs(installed):
    _, site = installed
    shipped = site / "reviveformer" / "recipes"
    for recipe in [*(REPO / "recipes").glob("*.yaml"), *(REPO / "recipes" / "accelerate").glob("*.yaml")]:
        assert (shipped / recipe.relative_to(REPO / "recipes")).read_text() == recipe.read_text(), recipe


def test_a_builtin_recipe_trains_by_name_into_the_current_folder(installed, elsewhere, corpus_file):
    venv, site = installed
    # the recipe's own train.output_dir (runs/quickstart/baseline), relative: where the user is
    tiny = [o for o in tiny_overrides(elsewhere, corpus_file) if not o.startswith("train.output_dir=")]
    steps = ["train.max_steps=2", "train.epochs=1", "train.eval_batches=1", "train.checkpoint_every=0"]
    p = _run([str(venv / "bin" / "reviveformer"), "train", "quickstart", *tiny, *steps], elsewhere)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    run_dir = elsewhere / "runs" / "quickstart" / "baseline"
    assert (run_dir / "final" / "model.safetensors").is_file()
    assert '"state": "finished"' in (run_dir / "status.json").read_text()
    assert not list(site.rglob("runs")), "a run folder was written inside site-packages"


def test_the_recipe_list_comes_from_the_installed_package(installed, elsewhere):
    venv, site = installed
    p = _run([str(venv / "bin" / "reviveformer"), "recipes"], elsewhere)
    assert p.returncode == 0, p.stdout + p.stderr
    assert str(site / "reviveformer" / "recipes") in p.stdout
    assert (
        "quickstart " in p.stdout and "Quickstart, baseline arm" in p.stdout and "single_gpu.yaml" in p.stdout
    )


def test_the_public_api_imports_from_the_installed_package(installed, elsewhere):
    venv, site = installed
    code = "import reviveformer; from reviveformer import LivenessMonitor; print(reviveformer.__file__)"
    p = _run([str(venv / "bin" / "python"), "-c", code], elsewhere)
    assert p.returncode == 0, p.stdout + p.stderr
    assert Path(p.stdout.strip()) == site / "reviveformer" / "__init__.py"
