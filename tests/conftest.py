"""Shared fixtures: an isolated cache, no hub access, tiny model settings, a small text corpus."""

from __future__ import annotations

import os
import socket
import sysconfig
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tokenised data and tokenizers are cached in a per-session folder, as on a fresh machine."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["REVIVEFORMER_CACHE"] = str(cache)
    os.environ["HF_DATASETS_CACHE"] = str(cache / "hf-datasets")
    yield cache


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    """About 120 KB of real text (a few standard-library modules), written once per session."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts = [
        (stdlib / name).read_text()
        for name in (
            "textwrap.py",
            "shlex.py",
            "fnmatch.py",
            "glob.py",
            "bisect.py",
            "heapq.py",
            "string.py",
            "colorsys.py",
        )
    ]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(parts))
    return path


def tiny_overrides(run_dir: Path, corpus: Path | None = None, **extra) -> list[str]:
    """The tiny settings every end-to-end test uses (2 layers, 64 wide, block 32)."""
    o = {
        "model.n_layer": 2,
        "model.n_embd": 64,
        "model.n_head": 2,
        "model.n_positions": 32,
        "data.block_size": 32,
        "data.vocab_size": 512,
        "train.batch_size": 8,
        "train.log_every": 5,
        "train.warmup_steps": 2,
        "train.output_dir": str(run_dir),
        "train.progress": False,
        "wandb.mode": "disabled",
    }
    if corpus is not None:
        o.update({"data.source": "text", "data.path": str(corpus)})
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def free_port() -> int:
    """A free local TCP port for an `accelerate launch` rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
