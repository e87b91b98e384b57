"""Watch and revive a tiny GPT-2 in an Accelerate loop (1..N processes) with reviveformer's public API.
Run: accelerate launch examples/accelerate_loop.py [--steps N]   (or plain python: one process)"""

import argparse

import torch
from accelerate import Accelerator
from transformers import GPT2Config, GPT2LMHeadModel

from reviveformer import LivenessConfig, LivenessMonitor, make_reviver

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--every", type=int, default=10)
args = parser.parse_args()

accelerator = Accelerator()
torch.manual_seed(0)  # the same initial weights on every process
model = GPT2LMHeadModel(
    GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=32, vocab_size=97, activation_function="relu")
)
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
model, opt = accelerator.prepare(model, opt)
monitor = LivenessMonitor(model, LivenessConfig(sites=["mlp_post"]))  # attaches through the DDP wrapper
reviver = make_reviver("synaptic_stripping", fraction=0.05)
data = torch.Generator().manual_seed(accelerator.process_index)  # each process its own batches

for step in range(1, args.steps + 1):
    ids = torch.randint(0, 97, (8, 32), generator=data).to(accelerator.device)
    accelerator.backward(model(input_ids=ids, labels=ids).loss)
    opt.step()
    opt.zero_grad()
    reviver.after_optimizer_step(model)  # stripped weights stay zero
    if step % args.every == 0:
        # counts summed over processes: every process decides the same revival
        report = monitor.report(lambda t: accelerator.reduce(t, "sum"))
        stripped = reviver.revive(model, report, opt)
        accelerator.print(
            f"step {step} dead_ratio {report.metrics()['liveness/mlp_post/dead_ratio']:.4f} "
            f"stripped {stripped['revival/stripped_now']:.0f}"
        )
        monitor.reset()
monitor.close()
accelerator.end_training()
