"""Shared fixtures: an isolated cache, no hub access, tiny model settings, a small text corpus, and `launch`, the one
way the tests run a script or the CLI under `accelerate launch` (or as a process of its own)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)
# One torch thread per test process: the suite runs two pytest-xdist workers on two cores, and every launched
# process gets OMP_NUM_THREADS=1 too (launch below). Set before torch is first imported, so it holds everywhere.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

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
        # no figures and no report page: the tests about them turn them on (tiny runs spend seconds drawing)
        "train.plots": False,
        "train.report": False,
        "wandb.mode": "disabled",
    }
    if corpus is not None:
        o.update({"data.source": "text", "data.path": str(corpus)})
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def _worker_index() -> int:
    """This pytest-xdist worker's number (gw0 -> 0); 0 without workers."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0


_PORTS_PER_WORKER = 1000
_next_port = itertools.count()


def free_port() -> int:
    """A free local TCP port for an `accelerate launch` rendezvous. Each xdist worker takes its ports from a range
    of its own (from 20000, below the kernel's ephemeral range that port 0 and outgoing sockets draw from), so two
    workers can never be handed the same port between the check here and the launcher's bind."""
    base = 20000 + _PORTS_PER_WORKER * _worker_index()
    for _ in range(_PORTS_PER_WORKER):
        port = base + next(_next_port) % _PORTS_PER_WORKER
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use (a launch of this worker still shutting down, or another program)
                continue
            return port
    raise RuntimeError(f"no free port in {base}..{base + _PORTS_PER_WORKER - 1}")


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from the parent pids in /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the field after the state
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def launch(
    script: str,
    args: Sequence[str] = (),
    processes: int = 2,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    accelerate: bool = True,
    hung: Callable[[], bool] | None = None,
) -> subprocess.CompletedProcess:
    """Run `script` with `args` under `accelerate launch` on CPU (gloo) with `processes` processes. `script` is a
    file in tests/ (`"dist_grama_script.py"`) or a module to run with -m (`"reviveformer"`, the CLI).
    `accelerate=False`: one plain `python` process instead, whose exit status is the script's own (accelerate
    launch turns any failure into 1). One torch thread per process; the repository and tests/ are on PYTHONPATH
    (for the dist_*.py scripts); `env` adds or replaces variables. The launcher runs in a session of its own, so
    that a hang past `timeout` is ended with every worker it started and fails the test with the output so far.
    `hung`: polled twice a second while the launch runs; once it returns True the launch counts as hung at once
    (a test whose script blocks on purpose says so instead of waiting the timeout out)."""
    target = [str(REPO / "tests" / script)] if script.endswith(".py") else ["-m", script]
    if accelerate:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd += ["--main_process_port", str(free_port())]
        if processes > 1:
            cmd.append("--multi_gpu")
    else:
        assert processes == 1, "a plain python process is one process"
        cmd = [sys.executable]
    full_env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    proc = subprocess.Popen(
        [*cmd, *target, *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            out, err = proc.communicate(timeout=0.5 if hung else max(deadline - time.monotonic(), 0))
            return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                why = f"did not finish in {timeout} s"
                break
            if hung is not None and hung():
                why = "hung"
                break
    # torch's elastic agent starts each worker in a session of its own, out of reach of the launcher's
    # group: its workers are found by parent pid (before the launcher dies and they are re-parented), and
    # killed, or one would hold the output pipes open and the communicate() below would wait for ever
    tree = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate()
    pytest.fail(f"launch of {[script, *args][:3]} {why}:\n{(out + err)[-4000:]}")


def launch_findings(script: str, out: Path, processes: int = 2, timeout: float = 300) -> dict:
    """Launch a tests/dist_*_script.py whose one argument is the JSON file its main process writes its findings
    to; a failed launch fails the test with the end of its output. The findings."""
    p = launch(script, [str(out)], processes, timeout=timeout)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return json.loads(out.read_text())


class SimulatedKill(BaseException):
    """Raised where the fault hook would end the process; BaseException so that no `except Exception` eats it."""


@contextlib.contextmanager
def killed_at(fault: str):
    """Inside, reviveformer/faults.py ends the run at `fault` (`phase[:occurrence]`) by raising SimulatedKill,
    which the block must end with (the test then resumes in this process); the hook is off again after it."""
    from reviveformer import faults

    def kill(message):
        raise SimulatedKill(message)

    mp = pytest.MonkeyPatch()
    mp.setattr(faults, "_kill", kill)
    mp.setattr(faults, "_arrivals", {})
    mp.setenv(faults.ENV, fault)
    try:
        with pytest.raises(SimulatedKill, match=fault):
            yield
    finally:
        mp.undo()
