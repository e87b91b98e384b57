"""The one door to logging: Accelerate trackers for metrics.jsonl and W&B. Only this module imports wandb.

Library code hands plain `dict[str, float]`s with slash-namespaced keys to `Tracking.log`; histograms,
images, tables and alerts go through the `Tracking` methods, which turn them into W&B objects when W&B is on.
A W&B failure never stops training: it warns once and the local metrics file carries on.

The contract: docs/design.md, "W&B" and the metric names.
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, WandBTracker

from reviveformer.config import WandbConfig

log = logging.getLogger("reviveformer")


class JsonlTracker(GeneralTracker):
    """Appends every logged scalar to metrics.jsonl: one JSON object per log call, {"step": N, key: value}."""

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self._fh = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # append: a resumed run continues the same file

    @property
    def tracker(self):
        return self._fh

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        row: dict[str, Any] = {"step": step}
        for k, v in values.items():
            if isinstance(v, bool):
                v = int(v)
            if isinstance(v, (int, float)):
                row[k] = v if (isinstance(v, int) or math.isfinite(v)) else str(v)
        if self._fh is None:
            self.start()
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    def finish(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class SafeWandBTracker(WandBTracker):
    """Accelerate's W&B tracker, except that any W&B error warns once and disables W&B for the rest of the run."""

    def __init__(self, run_name: str, **kwargs):
        super().__init__(run_name, **kwargs)
        self.failed = False
        self.run = None

    def _fail(self, what: str, e: BaseException) -> None:
        if not self.failed:
            log.warning(
                "W&B %s failed (%s: %s); training goes on with the local metrics file only",
                what,
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
            )
        self.failed = True

    def _safe(self, what: str, fn, *args, **kwargs):
        if self.failed or (self.run is None and what != "init"):
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # W&B raises many types (network, auth, service); none may stop training
            self._fail(what, e)
            return None

    def start(self) -> None:
        self._safe("init", super().start)

    def store_init_configuration(self, values: dict) -> None:
        self._safe("config", super().store_init_configuration, values)

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self._safe("log", super().log, values, step=step, **kwargs)

    def finish(self) -> None:
        # also after a failure: an unfinished run would linger in wandb's process-wide state
        if self.run is None:
            return
        try:
            self.run.finish()
        except Exception as e:
            self._fail("finish", e)


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        return "online" if has_wandb_credentials() else "offline"
    return mode


class Tracking:
    """Metrics, histograms, figures, tables and alerts of one run, to metrics.jsonl and (if on) W&B."""

    def __init__(self, accelerator, cfg: WandbConfig, run_dir: str | Path, config_dict: dict, job_type: str):
        self.accelerator = accelerator
        self.run_dir = Path(run_dir)
        self.mode = resolve_mode(cfg.mode)
        self.wandb: SafeWandBTracker | None = None
        trackers: list[GeneralTracker] = [JsonlTracker(self.run_dir / "metrics.jsonl")]
        if self.mode != "disabled":
            init = {
                "wandb": dict(
                    mode=self.mode,
                    dir=str(self.run_dir),
                    name=cfg.name or self.run_dir.name,
                    entity=cfg.entity,
                    group=cfg.group,
                    job_type=job_type,
                    tags=list(cfg.tags),
                )
            }
            self.wandb = SafeWandBTracker(cfg.project, **init["wandb"])
            trackers.append(self.wandb)
        # Accelerate wants trackers at construction or via log_with; we add ours to an existing accelerator.
        accelerator.log_with = trackers
        accelerator.trackers = []
        if accelerator.is_main_process:
            for t in trackers:
                t.start()
                t.store_init_configuration(config_dict)
            accelerator.trackers = trackers
        if (
            self.wandb is not None
            and accelerator.is_main_process
            and self.mode == "offline"
            and self.wandb.run
        ):
            run_path = Path(self.wandb.run.dir).parent
            log.info(
                "W&B is offline (no credentials found): the run is saved in %s; upload it later with "
                "`wandb sync %s`",
                run_path,
                run_path,
            )

    @property
    def wandb_run(self):
        w = self.wandb
        return w.run if (w is not None and not w.failed and self.accelerator.is_main_process) else None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.accelerator.is_main_process and metrics:
            self.accelerator.log(metrics, step=step)

    def _wandb_log(self, what: str, payload_fn, step: int) -> None:
        run = self.wandb_run
        if run is None:
            return
        try:
            run.log(payload_fn(), step=step)
        except Exception as e:
            self.wandb._fail(what, e)

    def log_histograms(self, hists: dict[str, tuple[Any, Any]], step: int) -> None:
        """hists: key -> (counts, bin_edges) of a fixed-bin histogram, or key -> 1-D array of values."""
        import numpy as np

        def payload():
            import wandb

            out = {}
            for k, v in hists.items():
                if isinstance(v, tuple):
                    out[k] = wandb.Histogram(np_histogram=(np.asarray(v[0]), np.asarray(v[1])))
                else:
                    out[k] = wandb.Histogram(np.asarray(v))
            return out

        self._wandb_log("histogram", payload, step)

    def log_images(self, images: dict[str, str | Path], step: int) -> None:
        def payload():
            import wandb

            return {k: wandb.Image(str(p)) for k, p in images.items() if Path(p).is_file()}

        self._wandb_log("image", payload, step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        def payload():
            import wandb

            return {key: wandb.Table(columns=columns, data=rows)}

        self._wandb_log("table", payload, step)

    def alert(self, title: str, text: str, level: str = "WARN") -> None:
        run = self.wandb_run
        if run is None:
            return
        try:
            import wandb

            run.alert(title=title, text=text, level=getattr(wandb.AlertLevel, level, wandb.AlertLevel.WARN))
        except Exception as e:
            self.wandb._fail("alert", e)

    def finish(self) -> None:
        if self.accelerator.is_main_process:
            for t in self.accelerator.trackers:
                t.finish()
        self.accelerator.trackers = []


def log_summary_run(
    cfg: WandbConfig,
    directory: str | Path,
    name: str,
    group: str,
    figures: dict[str, str | Path],
    tables: dict[str, tuple[list[str], list[list[Any]]]],
) -> Path | None:
    """One W&B run of its own (job_type "summary", in `group` beside the runs it summarises) holding a
    comparison's figures (images) and tables, e.g. a sweep's seed table and band figures. Nothing when W&B is
    disabled; a W&B failure warns and returns None (the files on disk are the comparison either way).
    Returns the run's local directory."""
    mode = resolve_mode(cfg.mode)
    if mode == "disabled":
        return None
    try:
        import wandb

        run = wandb.init(
            mode=mode,
            dir=str(directory),
            project=cfg.project,
            entity=cfg.entity,
            group=group,
            job_type="summary",
            name=name,
            tags=list(cfg.tags),
            reinit="create_new",
        )
        try:
            payload: dict[str, Any] = {
                k: wandb.Image(str(p)) for k, p in figures.items() if Path(p).is_file()
            }
            payload.update({k: wandb.Table(columns=c, data=rows) for k, (c, rows) in tables.items()})
            run.log(payload)
            where = Path(run.dir).parent
        finally:
            run.finish()
    except Exception as e:
        log.warning(
            "W&B summary run failed (%s: %s); the comparison is in %s",
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
            directory,
        )
        return None
    if mode == "offline":
        log.info("W&B summary run saved offline in %s; upload it later with `wandb sync %s`", where, where)
    return where


def fetch_wandb_group(entity_project: str, group: str) -> list[tuple[str, dict, list[dict], str | None, str]]:
    """Runs of a W&B group through the public API: (name, config, history rows, job_type, id) each.
    Needs credentials (`wandb login` or WANDB_API_KEY); errors propagate to the caller."""
    import wandb

    out = []
    for r in wandb.Api().runs(entity_project, filters={"group": group}):
        out.append(
            (
                r.name,
                _plain(dict(r.config)),
                list(r.scan_history()),
                getattr(r, "job_type", None),
                getattr(r, "id", r.name),
            )
        )
    return out


def _plain(obj: Any) -> Any:
    """W&B config values as plain dicts/lists (the API returns its own mapping types)."""
    if isinstance(obj, dict) or hasattr(obj, "items"):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
