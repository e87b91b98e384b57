"""Validation passes shared by training, `audit` and `strip`: exact token-mean loss and a liveness window.

The contract: docs/design.md, "Liveness: the definitions" (windows, measurement size).
"""

from __future__ import annotations

import math

import torch

from reviveformer import metric_keys


def val_loader(accelerator, dataset, batch_size: int):
    """A validation DataLoader split across processes without padding duplicates, so that liveness counts
    see each token exactly once; losses are reduced as sums, which needs no equal batch counts."""
    from torch.utils.data import DataLoader

    # its own generator, so that evaluating never draws from the global RNG that training's dropout uses
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    accelerator.even_batches = False
    try:
        return accelerator.prepare(loader)
    finally:
        accelerator.even_batches = True


def local_batches(accelerator, max_batches: int | None) -> int | None:
    """This process's share of the first `max_batches` validation batches. The prepared loader deals batch k
    of the whole split to process k % N, so a cap on the number of batches is a global one: 1 and N processes
    measure the same tokens."""
    if max_batches is None:
        return None
    n, i = accelerator.num_processes, accelerator.process_index
    return max(0, (max_batches - i + n - 1) // n)


def reduce_sum(accelerator, t: torch.Tensor) -> torch.Tensor:
    return accelerator.reduce(t, "sum") if accelerator.num_processes > 1 else t


@torch.no_grad()
def evaluate(model, loader, accelerator, max_batches: int | None = None, progress=None) -> dict[str, float]:
    """Mean next-token loss over all validation tokens of all processes (the first `max_batches` batches of
    the split, in all), and its perplexity."""
    max_batches = local_batches(accelerator, max_batches)
    was_training = model.training
    model.eval()
    dev = accelerator.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    count = torch.zeros((), dtype=torch.float64, device=dev)
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
        # next-token targets: shift the labels, not the logits (slicing the logits would copy them all)
        ids = batch["labels"]
        labels = torch.cat([ids[:, 1:], ids.new_full((ids.shape[0], 1), -100)], dim=1)
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            labels.reshape(-1),
            reduction="sum",
            ignore_index=-100,
        )
        loss_sum += loss.double()
        count += (labels != -100).sum()
        if progress is not None:
            progress.update(1)
    loss_sum, count = reduce_sum(accelerator, loss_sum), reduce_sum(accelerator, count)
    model.train(was_training)
    val_loss = (loss_sum / count.clamp(min=1)).item()
    return {metric_keys.VAL_LOSS: val_loss, metric_keys.VAL_PPL: math.exp(min(val_loss, 50.0))}


def measure(
    model, loader, accelerator, monitor, pruned_masks=None, max_batches: int | None = None, progress=None
):
    """A validation pass in eval mode with its own liveness window (a training window in progress is kept).

    Returns (val metrics, LivenessReport or None when there is no monitor)."""
    if monitor is None:
        return evaluate(model, loader, accelerator, max_batches, progress), None
    # counting: training may have left the monitor off (liveness.sample_every)
    with monitor.counting(), monitor.fresh_window():
        val = evaluate(model, loader, accelerator, max_batches, progress)
        report = monitor.report(reduce=lambda t: reduce_sum(accelerator, t), pruned_masks=pruned_masks)
    return val, report


class Measurement:
    """A training run's validation passes (`train.eval_batches` of the split): the loss alone (`evaluate`) or
    with a liveness window (`measure`). Each first settles the train log's liveness window still on its way
    (`LivenessLog.settle`): a measurement syncs anyway, and the rows of a run stay in step order."""

    def __init__(self, model, loader, accelerator, monitor, reviver, max_batches: int | None, liveness_log):
        self.model = model
        self.loader = loader
        self.accelerator = accelerator
        self.monitor = monitor
        self.reviver = reviver
        """Its pruned weights (synaptic stripping) count as dead in the liveness report."""
        self.max_batches = max_batches
        self.liveness_log = liveness_log

    def evaluate(self) -> dict[str, float]:
        """Validation loss only; the monitor is paused so the training window holds training tokens alone."""
        self.liveness_log.settle()
        if self.monitor is None:
            return evaluate(self.model, self.loader, self.accelerator, self.max_batches)
        with self.monitor.paused():
            return evaluate(self.model, self.loader, self.accelerator, self.max_batches)

    def measure(self):
        """Validation loss and a liveness report (None without a monitor)."""
        self.liveness_log.settle()
        masks = self.reviver.pruned_masks() if self.reviver is not None else None
        return measure(self.model, self.loader, self.accelerator, self.monitor, masks, self.max_batches)
