"""The runs of a sweep in their folders: which are finished and kept (and whether a kept one is this sweep's
run), which resume, which start again, and training the rest in order."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from reviveformer.sweep.grid import PlannedRun


def is_finished(run_dir: Path) -> bool:
    """A run that reached its planned end (status.json says finished; a run folder from before status files:
    its final/ is written). A run killed or interrupted after an earlier final/ is not finished: it resumes."""
    from reviveformer.run_status import read_status

    status = read_status(run_dir)
    return status.complete and status.has_final  # a finished run whose final/ is gone has nothing to keep


def restart_unresumable(run_dir: Path) -> None:
    """A run of this sweep killed before its first complete checkpoint cannot be resumed, and `train` refuses
    to start afresh on top of it: the sweep owns the folder, so it clears it and the run starts again."""
    from reviveformer.checkpoint import find_resume_point

    if (run_dir / "config.yaml").is_file() and find_resume_point(run_dir / "checkpoints") is None:
        print(
            f"sweep: {run_dir} has no complete checkpoint to resume from; starting that run again", flush=True
        )
        shutil.rmtree(run_dir)


def _value(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else getattr(cfg, part)
    return cfg


def _saved_config(run_dir: Path) -> dict[str, Any]:
    """A run folder's config.yaml as plain YAML: never through load_config, which would import a plug-in
    revival.method it names (reading a run folder must not run its code)."""
    import yaml

    from reviveformer.errors import UserError

    path = run_dir / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read it as YAML ({e}); expected a run's config.yaml") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds {type(data).__name__}, not a mapping; expected a run's config.yaml")
    return data


def check_finished_run(run: PlannedRun, cfg: Any, keys: list[str]) -> None:
    """A finished run is kept only if it is this run: the same values of the keys the sweep sets."""
    from reviveformer.config import to_dict
    from reviveformer.errors import UserError

    saved, planned = _saved_config(run.run_dir), to_dict(cfg)
    for key in keys:
        try:
            old = _value(saved, key)
        except AttributeError:
            old = None  # a section missing from an old config.yaml: it differs from any planned value
        new = _value(planned, key)
        if old != new:
            raise UserError(
                f"{run.run_dir} holds a finished run with {key}={old!r}, but this sweep's run there has {key}={new!r}; "
                "give another --out, or remove that directory to train it again (nothing was changed)"
            )


def finished_runs(plan: list[PlannedRun], configs: list[Any], keys: list[str]) -> list[bool]:
    """Which planned runs are finished, each checked to be this sweep's run (same values of `keys`). Decided
    before any training, so every process skips the same runs."""
    finished = [is_finished(r.run_dir) for r in plan]
    for r, cfg, done in zip(plan, configs, finished, strict=True):
        if done:
            check_finished_run(r, cfg, keys)
    return finished


def train_runs(state: Any, plan: list[PlannedRun], configs: list[Any], finished: list[bool]) -> None:
    """Train every run not finished, in the plan's order, on every process of `state` (a PartialState); the
    main process names each run first and clears a run that cannot resume."""
    from reviveformer.trainer import train

    for r, cfg, done in zip(plan, configs, finished, strict=True):
        if state.is_main_process:
            print(f"sweep: {r.label}" + (" is finished; kept" if done else ""), flush=True)
            if not done and cfg.train.resume == "auto":
                restart_unresumable(r.run_dir)
        state.wait_for_everyone()
        if not done:
            train(cfg, keep_process_group=True)
