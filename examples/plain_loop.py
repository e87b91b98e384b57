"""Watch and revive a tiny GPT-2 in a plain PyTorch loop with reviveformer's public API (random token data).
Run: python examples/plain_loop.py [--steps N]"""

import argparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from reviveformer import (
    AlertManager,
    AlertRule,
    AlertsConfig,
    LivenessConfig,
    LivenessMonitor,
    console_sink,
    make_reviver,
)

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--every", type=int, default=10)
args = parser.parse_args()

torch.manual_seed(0)
model = GPT2LMHeadModel(
    GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=32, vocab_size=97, activation_function="relu")
)
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
monitor = LivenessMonitor(model, LivenessConfig(sites=["mlp_post"]))
reviver = make_reviver("redo", tau=0.1)
alerts = AlertManager(AlertsConfig(rules=[AlertRule(name="dead_mlp", above=0.3)]), [console_sink])

for step in range(1, args.steps + 1):
    ids = torch.randint(0, 97, (8, 32))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
    if step % args.every == 0:
        report = monitor.report()  # the tokens of the last `every` steps
        metrics = report.metrics()
        alerts.check(metrics, step)
        revived = reviver.revive(model, report, opt)  # resets opt's state of what it re-initialises
        print(
            f"step {step} dead_ratio {metrics['liveness/mlp_post/dead_ratio']:.4f} "
            f"dormant_units {revived['revival/dormant_units']:.0f}"
        )
        monitor.reset()
monitor.close()
