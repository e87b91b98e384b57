"""Resuming a run: which checkpoint (`resume_path`), whether its settings may change (`check_resume`, the
table of docs/design.md, "Resuming"), all decided before anything is written; where training stands in it is
`loop.training_state.restore_position`.

A checkpoint carries the resolved config it was saved with. Each setting a resume changes is either refused
(it would silently change what the checkpoint means: the model, the data and its order, the optimizer's
state, the liveness counts or the revival masks), allowed with one warning (it takes effect from the resumed
step on), or allowed silently (it changes where output goes or how it looks, not the run).

A checkpoint also carries the run's tokenizer and its data's fingerprint (each source's text hashes and token
counts): a resume encodes the data with that tokenizer (`saved_tokenizer`, never a new one) and refuses data
that differs from the fingerprint (`check_data`) unless `train.resume_data=changed` asks to train on.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from reviveformer import checkpoint as ckpt
from reviveformer.config import Config, to_dict, upgrade_revival_keys
from reviveformer.data import load_tokenizer
from reviveformer.errors import CheckpointError, DataError

log = logging.getLogger("reviveformer")

# Allowed with a warning: read afresh at every use, so a new value acts from the resumed step on.
ALLOWED = (
    "train.epochs",
    "train.max_steps",
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.checkpoint_every",
    "train.checkpoint_limit",
    "train.grad_clip",
    "train.max_bad_steps",
    "liveness.dead_frequency",
    "liveness.tau",
    "liveness.sample_every",
    "liveness.histogram_every",
    "liveness.histogram_bins",
    "liveness.frequency_histogram_every",
    "liveness.counting",
    "alerts.",
    "revival.every_steps",
    "revival.every",
    "revival.synaptic_stripping.fraction",
    "revival.synaptic_stripping.strip_bias",
    "revival.redo.tau",
    "revival.grama.tau",
    "revival.continual_backprop.",  # read at every step; the host's mature count is rebuilt at load
    "revival.shrink_perturb.",
    "revival.l2_init.strength",
    "data.cache_dir",
)
# Allowed silently: where the output goes and how it is shown.
# model.trust_remote_code is a permission for one load (init_from), not something the checkpoint holds.
SILENT = (
    "train.output_dir",
    "train.resume",
    "train.resume_data",  # how this resume treats changed data (`check_data`), not what the run is
    "train.progress",
    "train.plots",
    "train.report",
    "wandb.",
    "model.trust_remote_code",
)
# Everything else is refused (a setting added later is refused until it is placed in the table).


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():  # lists (alerts.rules, liveness.sites) stay whole: one key each
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _matches(key: str, table: tuple[str, ...]) -> bool:
    return any(key == t or (t.endswith(".") and key.startswith(t)) for t in table)


def compare_settings(saved: dict[str, Any], new: dict[str, Any], checkpoint: str) -> list[str]:
    """Raise CheckpointError naming every refused change (key, saved value, new value); return the allowed
    changes, one line each, for the caller's single warning. Both configs are resolved `to_dict` trees."""
    # a checkpoint saved before each revival method had its own section holds the old flat keys
    saved = upgrade_revival_keys(copy.deepcopy(saved), f"checkpoint {checkpoint}", warn=False)
    a, b = flatten(saved), flatten(new)
    defaults = flatten(to_dict(Config()))
    refused, allowed = [], []
    for key in sorted(a.keys() | b.keys()):
        old, cur = a.get(key), b.get(key)
        if old == cur or _matches(key, SILENT):
            continue
        if key not in a and key in defaults and cur == defaults[key]:
            # a key added after the checkpoint was saved, at its default: the value the code that saved the
            # checkpoint used (each new key's default keeps the old behaviour), so nothing changes
            continue
        line = f"{key}: {old!r} -> {cur!r}"
        (allowed if _matches(key, ALLOWED) else refused).append(line)
    if refused:
        raise CheckpointError(
            f"cannot resume from {checkpoint} with changed settings: "
            + "; ".join(refused)
            + " (saved -> new). "
            "These change what the checkpoint means (model, data and its order, optimizer, liveness counts or "
            "revival masks); resume with the saved values, or start a new run in another train.output_dir. "
            "Nothing was changed."
        )
    return allowed


def resume_path(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint `train.resume` names: None for never (or auto with none complete), the newest complete
    one for auto, else the directory given, which must be a complete checkpoint."""
    if resume == "never":
        return None
    if resume == "auto":
        found = ckpt.find_resume_point(run_dir / "checkpoints")
        if found is None:
            log.info("train.resume=auto: no complete checkpoint in %s; starting fresh", run_dir)
        return found
    p = Path(resume)
    if not (p / ckpt.MARKER).is_file():
        raise CheckpointError(
            f"train.resume={resume} is not a complete reviveformer checkpoint (no {ckpt.MARKER} "
            "marker); give never, auto, or a checkpoints/step_XXXXXXXX directory"
        )
    return p


def saved_tokenizer(path: Path):
    """The run's own tokenizer, saved in its checkpoint at `path` (checked for damage first: it is read before
    the weights); None for a checkpoint from before checkpoints held one."""
    if not (path / ckpt.TOKENIZER_FILE).is_file():
        return None
    ckpt.refuse_damaged(path)
    try:
        return load_tokenizer(str(path))
    except DataError as e:
        raise CheckpointError(f"checkpoint {path}: its tokenizer does not load ({e})") from None


def source_name(k: int) -> str:
    """The config entry of a run's k-th data source: the data section, then each of tasks.corpora."""
    return "data" if k == 0 else f"tasks.corpora[{k - 1}]"


def _count(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else "?"


def _split_change(saved: dict, now: dict, split: str) -> str | None:
    keys = (f"{split}_text", f"{split}_documents", f"{split}_tokens")
    if all(saved.get(k) == now.get(k) for k in keys):
        return None
    what = "text changed" if saved.get(keys[0]) != now.get(keys[0]) else "text the same"
    docs, tokens = (f"{_count(saved.get(k))} -> {_count(now.get(k))}" for k in keys[1:])
    return f"{split} split's {what} ({docs} documents, {tokens} tokens)"


def compare_data(saved: list[dict], now: list[dict]) -> list[str]:
    """One line per data source whose fingerprint differs from the checkpoint's, naming what changed."""
    lines = []
    for k in range(max(len(saved), len(now))):
        a, b = (saved[k] if k < len(saved) else None), (now[k] if k < len(now) else None)
        a, b = (a if isinstance(a, dict) else {}), (b if isinstance(b, dict) else {})
        if a == b:
            continue
        parts = (
            [f"source {a.get('source')} -> {b.get('source')}"] if a.get("source") != b.get("source") else []
        )
        parts += [c for split in ("train", "validation") if (c := _split_change(a, b, split))]
        lines.append(f"{source_name(k)} ({b.get('source') or a.get('source')}): {', '.join(parts)}")
    return lines


def check_data(path: Path, state: dict, now: list[dict], resume_data: str) -> None:
    """Refuse a resume whose data differs from the checkpoint's (naming each source and split), or with
    `train.resume_data=changed` warn once and go on; a checkpoint from before fingerprints cannot be checked."""
    saved = state.get("data_fingerprint")
    if not isinstance(saved, list):  # None: saved before checkpoints kept it
        log.warning(
            "checkpoint %s was saved before checkpoints recorded their data and tokenizer: the data cannot be "
            "checked against it (a changed corpus would go unnoticed, and retrains the tokenizer)",
            path,
        )
        return
    changes = compare_data(saved, now)
    if not changes:
        return
    if resume_data != "changed":
        raise CheckpointError(
            f"cannot resume from {path}: the data differs from what the run trained on: "
            + "; ".join(changes)
            + " (saved -> now). Resume on the run's own data, give train.resume_data=changed to train on "
            "the new data (encoded with the run's own tokenizer), or start a new run in another "
            "train.output_dir. Nothing was changed."
        )
    log.warning(
        "resuming from %s on changed data (train.resume_data=changed): %s (saved -> now); it is encoded with "
        "the run's own tokenizer and trained on from step %d",
        path,
        "; ".join(changes),
        state["step"],
    )


def what_was_compared(state: dict) -> str:
    """What a resume compared before loading the checkpoint's weights, for the message when loading fails."""
    if not isinstance(state.get("data_fingerprint"), list):
        return (
            "its settings and process count were compared with this run's, but it predates data "
            "fingerprints, so its data could not be: a corpus changed since it was saved (data.path's files, "
            "or another Python's standard library with data.source=stdlib) trains a tokenizer of another "
            "size, whose embedding does not fit; resume on the data the run trained on (or it may belong to "
            "another model size or number of processes)"
        )
    return (
        "its settings, process count and data (each source's text and tokens, encoded with the checkpoint's "
        "own tokenizer) were compared with this run's before loading, so neither a data change nor the "
        "model's size explains it: the checkpoint may come from another version of reviveformer"
    )


def _refuse_elastic_tasks(saved_np: int, num_processes: int, cfg: Config, path: Path) -> None:
    """A task run resumes on its own process count only. Its task lengths are optimizer steps, fixed when it
    started (tasks.steps, or tasks.epochs times the steps of an epoch on the saved count); each step takes
    tokens in proportion to the processes, so on another count the tasks still to come would train on other
    token counts than the ones before them, and the run would no longer compare its tasks like with like."""
    if saved_np == num_processes or cfg.tasks.kind == "none":
        return
    raise CheckpointError(
        f"cannot resume the task run (tasks.kind={cfg.tasks.kind}) saved at {path} on {num_processes} "
        f"process(es): it was trained on {saved_np}. Its tasks are counted in optimizer steps, and a step takes "
        f"{num_processes}/{saved_np} times the tokens on {num_processes}, so the tasks still to come would train "
        f"on other token counts than the earlier ones. Resume it on {saved_np} process(es); nothing was changed."
    )


def check_resume(path: Path, cfg: Config, num_processes: int, data: list[dict]) -> dict:
    """Read the checkpoint's state and refuse a resume it cannot honour (its settings, then `data`: each
    source's fingerprint as prepared now), before anything is written; announce what it may change in one
    warning. Returns the state."""
    state = ckpt.read_state(path)
    saved_cfg = state.get("config")
    if saved_cfg is None:  # a checkpoint from before configs were saved in it: the run's config.yaml
        import yaml

        legacy = path.parent.parent / "config.yaml"
        saved_cfg = yaml.safe_load(legacy.read_text()) if legacy.is_file() else to_dict(cfg)
    changes = compare_settings(saved_cfg, to_dict(cfg), str(path))
    check_data(path, state, data, cfg.train.resume_data)
    saved_np = state.get("num_processes", 1)
    _refuse_elastic_tasks(saved_np, num_processes, cfg, path)
    if saved_np != num_processes:
        changes.append(
            f"processes: {saved_np} -> {num_processes} (the data position, step "
            "count, liveness and revival state carry over; the random streams cannot, so the result "
            "will not be bit-identical to an uninterrupted run)"
        )
    if state.get("stopped_by"):
        log.warning(
            "this run was stopped at step %d (%s); resuming trains on from there",
            state["step"],
            state["stopped_by"],
        )
    if changes:
        log.warning(
            "resuming from %s with changed settings, in effect from step %d on: %s",
            path,
            state["step"],
            "; ".join(changes),
        )
    return state
