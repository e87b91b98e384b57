"""Opening a model folder never runs its code: a `package.module:attr` that a folder's own files name
(config.json's activation, reviveformer.yaml's revival.method) is imported only with the user's opt-in
(`--trust-remote-code`, `model.trust_remote_code=true`); built-in names need none.

The attack is real: `python -m reviveformer` (what `accelerate launch -m` runs) puts the current folder on
the import path, so a folder holding `payload.py` and naming `FOLDER.payload:act` ran that payload. The
refusal tests run the CLI that way, with the folder's parent as the current directory, and check that the
payload's marker file never appears; one run with the opt-in shows that the same folder does run it then."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, tiny_overrides
from reviveformer.config import ModelConfig, load_config
from reviveformer.errors import CheckpointError

TESTS = Path(__file__).parent
RECIPE = REPO / "recipes" / "quickstart.yaml"
MARKER = "PAYLOAD_RAN"
# Imported, it leaves a marker beside its folder; as an activation it is a plain ReLU.
PAYLOAD = f"""from pathlib import Path

Path(__file__).resolve().parent.parent.joinpath({MARKER!r}).write_text("imported")

import torch


def act(x):
    return torch.relu(x)
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_file) -> Path:
    """A finished tiny run whose activation is the tests' own plug-in, named in the user's own overrides
    (trusted as ever): its final/ is a legitimate folder that names `custom_act:squareplus`."""
    from reviveformer.trainer import train

    run_dir = tmp_path_factory.mktemp("trust") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(TESTS))
        train(
            load_config(
                RECIPE,
                tiny_overrides(
                    run_dir,
                    corpus_file,
                    **{
                        "model.activation": "custom_act:squareplus",
                        "data.max_tokens": 32 * 8 * 4,
                        "train.epochs": 1,
                    },
                ),
            )
        )
    return run_dir / "final"


def _set_activation(folder: Path, name: str, hf_name: str) -> None:
    path = folder / "config.json"
    c = json.loads(path.read_text())
    c["reviveformer_activation"] = name
    c["activation_function"] = hf_name
    path.write_text(json.dumps(c))


def _set_revival_method(folder: Path, method: str) -> None:
    path = folder / "reviveformer.yaml"
    c = yaml.safe_load(path.read_text())
    c["revival"]["method"] = method
    c["model"]["activation"] = "relu"
    path.write_text(yaml.safe_dump(c))


def _hostile(trained: Path, root: Path, variant: str) -> tuple[Path, str]:
    """A copy of the legitimate folder, renamed `name` in `root`, that names its own payload (or os:abort)
    through config.json ("act", "abort") or reviveformer.yaml ("yaml"); returns it and the file that names it."""
    name = f"evil_{variant}"
    folder = root / name
    shutil.copytree(trained, folder)
    (folder / "payload.py").write_text(PAYLOAD)
    if variant == "act":
        _set_activation(folder, f"{name}.payload:act", f"{name}.payload:act")
        return folder, "config.json"
    if variant == "abort":
        _set_activation(folder, "os:abort", "os:abort")
        return folder, "config.json"
    _set_activation(folder, "relu", "relu")  # a built-in: only the yaml asks for code
    _set_revival_method(folder, f"{name}.payload:act")
    return folder, "reviveformer.yaml"


def _cli(args: list[str], cwd: Path, *extra_path: Path) -> subprocess.CompletedProcess:
    """`python -m reviveformer ARGS` in `cwd`, which -m puts first on the import path (the attack)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in (REPO, *extra_path)))
    return subprocess.run(
        [sys.executable, "-m", "reviveformer", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_refused(p: subprocess.CompletedProcess, file: Path, module: str, opt_in: str) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert f"{file} names " in p.stderr
    assert f"would import and run module {module!r}" in p.stderr
    assert opt_in in p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["act", "yaml", "abort"])
@pytest.mark.parametrize("command", ["audit", "strip"])
def test_audit_and_strip_refuse_code_their_folder_names(trained, tmp_path, variant, command):
    folder, file = _hostile(trained, tmp_path, variant)
    module = "os" if variant == "abort" else f"{folder.name}.payload"
    out = tmp_path / "out"
    args = [command, folder.name] + (["--out", str(out)] if command == "strip" else [])
    p = _cli(args, tmp_path)
    _assert_refused(p, Path(folder.name) / file, module, "--trust-remote-code")
    assert not (tmp_path / MARKER).exists()  # the payload never ran
    assert not out.exists() and not (tmp_path / "audit").exists()  # nothing written


@pytest.mark.slow
def test_train_init_from_refuses_code_its_checkpoint_names(trained, tmp_path, corpus_file):
    folder, _ = _hostile(trained, tmp_path, "act")
    run_dir = tmp_path / "run"
    p = _cli(
        ["train", str(RECIPE), *tiny_overrides(run_dir, corpus_file), f"model.init_from={folder.name}"],
        tmp_path,
    )
    _assert_refused(p, Path(folder.name) / "config.json", "evil_act.payload", "model.trust_remote_code=true")
    assert not (tmp_path / MARKER).exists()
    assert not run_dir.exists()


@pytest.mark.slow
def test_the_opt_in_runs_the_folders_code(trained, tmp_path):
    """The control for the refusals above: the same hostile folder with the override opt-in is loaded, so its
    payload runs (the marker appears) and strip finishes."""
    folder, _ = _hostile(trained, tmp_path, "act")
    out = tmp_path / "stripped"
    p = _cli(["strip", folder.name, "--out", str(out), "model.trust_remote_code=true"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / MARKER).read_text() == "imported"
    assert json.loads((out / "config.json").read_text())["reviveformer_activation"] == "evil_act.payload:act"


@pytest.mark.slow
def test_a_legitimate_plugin_loads_with_the_flag_only(trained, tmp_path):
    """custom_act is importable here (on PYTHONPATH) and still needs the opt-in: where a name came from, not
    whether it imports, decides."""
    refused = _cli(["audit", str(trained), "--out", str(tmp_path / "a")], tmp_path, TESTS)
    _assert_refused(refused, trained / "config.json", "custom_act", "--trust-remote-code")
    assert not (tmp_path / "a").exists()
    p = _cli(["audit", str(trained), "--out", str(tmp_path / "b"), "--trust-remote-code"], tmp_path, TESTS)
    assert p.returncode == 0, p.stderr
    liveness = json.loads((tmp_path / "b" / "liveness.json").read_text())
    assert [e["layer"] for e in liveness["sites"]["mlp_post"]] == [0, 1]  # the 2-layer model, measured


def test_init_from_takes_the_opt_in_from_the_users_config(trained, monkeypatch):
    from reviveformer.model import init_from_checkpoint

    monkeypatch.syspath_prepend(str(TESTS))
    with pytest.raises(CheckpointError, match=r"custom_act.*add model\.trust_remote_code=true"):
        init_from_checkpoint(ModelConfig(init_from=str(trained)))
    model = init_from_checkpoint(ModelConfig(init_from=str(trained), trust_remote_code=True))
    act = model.transformer.h[0].mlp.act
    assert act(torch.tensor([0.0, 3.0])).tolist() == pytest.approx([1.0, 3.3027756])


@pytest.mark.parametrize("name", ["relu", "gelu_new", "prelu", "leaky_relu", "gelu_pytorch_tanh"])
def test_built_in_activations_need_no_opt_in(tmp_path, name):
    from reviveformer.model import build_model, load_model

    cfg = ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=16, activation=name, leaky_relu_slope=0.2)
    build_model(cfg, 64, 0).save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))  # trust_remote_code defaults to False
    assert loaded.config.reviveformer_activation == name


def test_a_saved_config_cannot_opt_itself_in(trained, tmp_path):
    """reviveformer.yaml holding model.trust_remote_code: true is not the user's opt-in."""
    from reviveformer.saved_model import open_saved_model

    folder = tmp_path / "m"
    shutil.copytree(trained, folder)
    path = folder / "reviveformer.yaml"
    c = yaml.safe_load(path.read_text())
    c["model"]["trust_remote_code"] = True
    path.write_text(yaml.safe_dump(c))
    with pytest.raises(CheckpointError, match="custom_act"):
        open_saved_model(str(folder), [])


def test_a_built_in_revival_method_in_the_yaml_needs_no_opt_in(trained, tmp_path):
    from reviveformer.saved_model import open_saved_model

    folder = tmp_path / "m"
    shutil.copytree(trained, folder)
    _set_activation(folder, "relu", "relu")
    _set_revival_method(folder, "redo")
    saved = open_saved_model(str(folder), [])
    assert saved.cfg.revival.method == "redo"
    assert saved.cfg.model.trust_remote_code is False
