"""--structure: what torch.compile makes of a model with the monitor installed, counted, not timed: graph
breaks, graphs compiled after warm-up (recompiles), Inductor's generated kernels with and without the monitor,
and the calls that copy to the host (`.item()`, `.cpu()`, `.tolist()`, `.numpy()` on a tensor) per step and per
log. On CPU, `.numpy()` of a `.cpu()` result and AdamW's reads of its CPU step counts are counted though they
sync nothing on a GPU; the figures are by method so that each can be read for what it is.

The loop is the bench's plain one (`loops.LoopArm`: compiled model, eager AdamW) with `liveness.sample_every=2`,
so sampled and unsampled steps alternate, a report (`counts().metrics()`) and `reset()` at every log, over
`windows` log windows after a warm-up window."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from .loops import _gpt2

# tensor methods that copy to the host: each call is counted, whoever makes it (the monitor, the loop)
HOST_COPIES = ("item", "cpu", "tolist", "numpy")


class HostCopies:
    """Counts calls of the HOST_COPIES methods of torch.Tensor while installed (`with HostCopies() as h:`).
    `.cpu()` of a tensor already on the CPU is counted too (on CPU every tensor is): the figure is the number
    of copies a CUDA run would make. Tracing skips the patch (dynamo sees the original methods)."""

    def __init__(self) -> None:
        self.calls = {name: 0 for name in HOST_COPIES}

    def __enter__(self) -> HostCopies:
        import torch

        self._saved = {name: getattr(torch.Tensor, name) for name in HOST_COPIES}
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, self._counted(name, original))
        return self

    def _counted(self, name: str, original):
        def counted(t, *args, **kwargs):
            self.calls[name] += 1
            return original(t, *args, **kwargs)

        return counted

    def __exit__(self, *exc) -> None:
        import torch

        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)

    def total(self) -> int:
        return sum(self.calls.values())


@contextlib.contextmanager
def _fresh_dynamo() -> Iterator[None]:
    import torch
    import torch._dynamo
    import torch._inductor.metrics

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch._inductor.metrics.reset()
    try:
        yield
    finally:
        torch._dynamo.reset()


# a kernel's definition in Inductor's generated code (C++ on CPU, Triton on GPU): one launch per call of the graph
_KERNEL_DEF = re.compile(r"^(\w+) = async_compile\.(cpp_pybinding|cpp|triton)\(", re.M)


class OutputCode:
    """The kernels Inductor writes into each graph it compiles while installed (`with OutputCode() as code:`),
    per graph in compile order: the number of kernels a call of that graph launches. This is the figure to
    compare with and without the monitor; `generated_kernel_count` counts the code generator's kernel objects
    (on CPU each loop nest and vector variant of one C++ function), which grows with fused reductions while
    the launches stay the same."""

    def __init__(self) -> None:
        self.per_graph: list[int] = []

    def __enter__(self) -> OutputCode:
        from torch._inductor.graph import GraphLowering

        self._original = GraphLowering.save_output_code
        seen = self.per_graph

        original = self._original  # None unless someone else collects the code too

        def save(code: str) -> None:
            seen.append(len(_KERNEL_DEF.findall(code)))
            if original is not None:
                original(code)

        GraphLowering.save_output_code = save
        return self

    def __exit__(self, *exc) -> None:
        from torch._inductor.graph import GraphLowering

        GraphLowering.save_output_code = self._original


def _graph_breaks() -> int:
    import torch._dynamo

    return sum(torch._dynamo.utils.counters["graph_break"].values())


def _kernels() -> int:
    import torch._inductor.metrics

    return torch._inductor.metrics.generated_kernel_count


def _compile_run(shape, batch: int, monitor: bool, sample_every: int, log_every: int, windows: int) -> dict:
    """One compiled model (counting backend around Inductor) trained for 1 + `windows` log windows; returns the
    counts seen during warm-up (the first window) and after it."""
    import torch
    from torch._dynamo.testing import CompileCounterWithBackend

    from reviveformer.config import LivenessConfig
    from reviveformer.liveness import LivenessMonitor

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = dev.type == "cuda"
    ids = torch.randint(
        0, shape[3], (batch, shape[2]), device=dev, generator=torch.Generator(dev).manual_seed(0)
    )
    with _fresh_dynamo():
        torch.manual_seed(0)
        model = _gpt2(*shape, dev)
        mon = LivenessMonitor(model, LivenessConfig(sample_every=sample_every)) if monitor else None
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        backend = CompileCounterWithBackend("inductor")
        forward = torch.compile(model, backend=backend, dynamic=False)
        marks: list[dict] = []  # counts at the end of each window
        copies_step: list[int] = []  # host copies in each step's forward and backward (monitor included)
        copies_opt: list[
            int
        ] = []  # and in its optimizer step (CPU AdamW reads its step counts: no device sync)
        copies_log: list[dict[str, int]] = []  # per log, by method
        kernels_by_step: list[int] = []  # Inductor kernels generated during each warm-up step
        with HostCopies() as hc, OutputCode() as code:
            for step in range(1, (1 + windows) * log_every + 1):
                before = hc.total()
                if mon is not None:
                    mon.begin_step(step)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = forward(input_ids=ids, labels=ids, use_cache=False).loss
                loss.backward()
                copies_step.append(hc.total() - before)
                before = hc.total()
                opt.step()
                copies_opt.append(hc.total() - before)
                opt.zero_grad(set_to_none=True)
                if step <= log_every:
                    kernels_by_step.append(_kernels() - sum(kernels_by_step))
                if step % log_every == 0:
                    before = dict(hc.calls)
                    loss.item()
                    if mon is not None:
                        mon.counts().metrics()
                        mon.reset()
                    copies_log.append({k: v - before[k] for k, v in hc.calls.items() if v > before[k]})
                    marks.append(
                        {
                            "graphs": backend.frame_count,
                            "unique_graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"],
                            "breaks": _graph_breaks(),
                            "kernels": _kernels(),
                        }
                    )
        if mon is not None:
            mon.close()
    warm = marks[0]
    return {
        "graphs_in_warmup": warm["graphs"],
        "graph_breaks_in_warmup": warm["breaks"],
        "kernels": warm["kernels"],
        "kernels_by_warmup_step": kernels_by_step,
        "recompiles_after_warmup": marks[-1]["graphs"] - warm["graphs"],
        # dynamo's own count of the graphs it made, beside the backend's count of the graphs it was given
        "dynamo_unique_graphs": [m["unique_graphs"] for m in marks],
        "graph_breaks_after_warmup": marks[-1]["breaks"] - warm["breaks"],
        "kernels_after_warmup": marks[-1]["kernels"] - warm["kernels"],
        # per compiled graph (forward, backward; with sampling, each variant's pair), in compile order
        "code_kernels_per_graph": code.per_graph,
        "windows_after_warmup": len(marks) - 1,
        "host_copies_per_step_max": max(copies_step[log_every:]),
        "host_copies_per_optimizer_step_max": max(copies_opt[log_every:]),
        "host_copies_per_log": copies_log[1:],
        "loss_finite": bool(torch.isfinite(loss.detach()).all()),
    }


def measure(shape=(2, 64, 32, 4096), batch: int = 4, log_every: int = 4, windows: int = 3) -> dict:
    """The structural figures of a compiled tiny GPT-2 (`shape`: n_layer, n_embd, block, vocab), without and
    with the monitor (sample_every=2). Inductor's kernel counts are of the whole compiled training step
    (forward and backward graphs; with the monitor, its sampled and unsampled variants, both compiled in the
    warm-up window: step 1 is unsampled, step 2 sampled, so `kernels_by_warmup_step` [step 1, step 2, ...]
    holds each variant's own count)."""
    off = _compile_run(shape, batch, False, 1, log_every, windows)
    on = _compile_run(shape, batch, True, 2, log_every, windows)
    return {"shape": list(shape), "batch": batch, "log_every": log_every, "off": off, "on": on}


def print_structure(res: dict) -> None:
    on, off = res["on"], res["off"]
    print(
        f"structure (torch.compile, inductor, GPT-2 {res['shape'][0]}x{res['shape'][1]} block {res['shape'][2]}, "
        f"sample_every=2, {on['windows_after_warmup']} log windows of {res['log_every']} steps after warm-up):"
    )
    print(
        f"  graph breaks: warm-up {off['graph_breaks_in_warmup']} / {on['graph_breaks_in_warmup']} "
        f"(monitor off / on), after {off['graph_breaks_after_warmup']} / {on['graph_breaks_after_warmup']}"
    )
    print(
        f"  graphs compiled: warm-up {off['graphs_in_warmup']} / {on['graphs_in_warmup']}, "
        f"recompiles after {off['recompiles_after_warmup']} / {on['recompiles_after_warmup']}"
    )
    print(
        f"  Inductor kernels generated (forward + backward graphs): monitor off {off['kernels']}, "
        f"on {on['kernels']} (after warm-up {off['kernels_after_warmup']} / {on['kernels_after_warmup']}); "
        f"by warm-up step {off['kernels_by_warmup_step']} / {on['kernels_by_warmup_step']} "
        "(with the monitor, step 1 is unsampled and step 2 sampled)"
    )
    print(
        f"  kernels in the generated code per compiled graph (forward, backward; with the monitor each variant): "
        f"monitor off {off['code_kernels_per_graph']}, on {on['code_kernels_per_graph']}: kernels launched per "
        f"training step {sum(off['code_kernels_per_graph'][:2])} / {sum(on['code_kernels_per_graph'][:2])} "
        f"(unsampled), {sum(on['code_kernels_per_graph'][2:4]) or '-'} (sampled)"
    )
    print(
        f"  host copies (.item/.cpu/.tolist/.numpy calls) per step's forward+backward at most "
        f"{off['host_copies_per_step_max']} / {on['host_copies_per_step_max']}, per optimizer step "
        f"{off['host_copies_per_optimizer_step_max']} / {on['host_copies_per_optimizer_step_max']}, per log "
        f"{off['host_copies_per_log'][-1]} / {on['host_copies_per_log'][-1]}"
    )
