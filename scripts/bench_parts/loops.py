"""In-process training loops for --scaling and --gpu: one model per arm, the arms' chunks interleaved."""

from __future__ import annotations

from .common import Clock, MonitorTime, _spread


def _gpt2(n_layer: int, n_embd: int, block: int, vocab: int, dev):
    from transformers import GPT2Config, GPT2LMHeadModel

    from reviveformer.model import CAUSAL_LM_LOSS

    cfg = GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=max(1, n_embd // 64),
        n_positions=block,
        vocab_size=vocab,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(cfg)
    model.loss_type = CAUSAL_LM_LOSS
    return model.to(dev).train()


class LoopArm:
    """One arm of an in-process loop: its own model (same seed), AdamW, optionally a monitor and compile. The arm
    named `reference` trains the bench's own plain PyTorch GPT (reference_gpt.py) at the same shape instead."""

    def __init__(
        self,
        name: str,
        shape: tuple[int, int, int, int],
        dev,
        monitor: str | None,
        compiled: bool,
        bf16: bool,
        log_every: int,
    ) -> None:
        import torch

        from reviveformer.config import LivenessConfig
        from reviveformer.liveness import LivenessMonitor

        from .reference_gpt import reference_gpt

        self.name, self.log_every, self.steps, self.bf16 = name, log_every, 0, bf16
        torch.manual_seed(0)
        self.reference = name == "reference"
        self.model = reference_gpt(*shape, dev) if self.reference else _gpt2(*shape, dev)
        self.monitor = LivenessMonitor(self.model, LivenessConfig(counting=monitor)) if monitor else None
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=dev.type == "cuda")
        self.forward = torch.compile(self.model) if compiled else self.model
        self.times: list[float] = []
        self.walls: list[float] = []
        self.peaks_mb: list[float] = []  # CUDA: peak allocated during each of this arm's chunks
        self.monitor_times: list[float] = []  # MonitorTime during each chunk (0 where nothing is timed)

    def step(self, ids) -> None:
        import torch

        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.reference:
                loss = self.forward(ids, ids)
            else:  # no KV cache: a training forward never reads it, and it adds outputs to every graph
                loss = self.forward(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.steps += 1
        if self.steps % self.log_every == 0:
            loss.item()
            if self.monitor is not None:  # the per-log report: one flat tensor to the host, the scalars
                self.monitor.counts().metrics()
                self.monitor.reset()


def interleaved(
    arms: list[LoopArm], ids, warmup: int, rounds: int, steps: int, clock: Clock
) -> dict[str, list[float]]:
    """Warm every arm, then `rounds` rounds of `steps` steps per arm (order rotated each round); returns the
    time of each arm's chunk, per round."""
    import torch

    cuda = ids.device.type == "cuda"
    for arm in arms:
        for _ in range(warmup):
            arm.step(ids)
    for r in range(rounds):
        for arm in arms[r % len(arms) :] + arms[: r % len(arms)]:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            m, a = MonitorTime.total, clock()
            for _ in range(steps):
                arm.step(ids)
            b = clock()
            arm.times.append(b[0] - a[0])
            arm.walls.append(b[1] - a[1])
            arm.monitor_times.append(MonitorTime.total - m)
            if cuda:
                arm.peaks_mb.append(torch.cuda.max_memory_allocated() / 2**20)
    return {arm.name: arm.times for arm in arms}


def overheads(times: dict[str, list[float]], pairs: dict[str, tuple[str, str]]) -> dict[str, dict]:
    """Per figure, the spread over rounds of time(arm) / time(base) - 1 (paired within each round)."""
    return {
        name: _spread([a / b - 1 for a, b in zip(times[arm], times[base], strict=True)])
        for name, (arm, base) in pairs.items()
    }
