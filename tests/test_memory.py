"""The memory check at load: GPT-2's parameter count from the config against transformers' own count, and
a refusal with the numbers when weights, gradients and AdamW state cannot fit."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from reviveformer.config import load_config
from reviveformer.errors import UserError
from reviveformer.memory import BYTES_PER_PARAM, available_bytes, check_fits, estimate, gpt2_params


@pytest.mark.parametrize(
    "n_layer, n_embd, n_inner, n_positions, vocab",
    [(2, 64, None, 32, 512), (3, 48, 100, 64, 4096), (1, 16, 16, 8, 300)],
)
def test_parameter_count_matches_transformers(n_layer, n_embd, n_inner, n_positions, vocab):
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=n_layer,
            n_embd=n_embd,
            n_inner=n_inner,
            n_head=2,
            n_positions=n_positions,
            vocab_size=vocab,
        )
    )
    counted = sum(p.numel() for p in model.parameters())  # the head is tied: counted once
    assert gpt2_params(n_layer, n_embd, n_inner, n_positions, vocab) == counted


def test_estimate_reads_the_checkpoint_sizes_with_init_from(tmp_path):
    GPT2LMHeadModel(
        GPT2Config(n_layer=3, n_embd=32, n_head=2, n_positions=16, vocab_size=333)
    ).save_pretrained(tmp_path)
    est = estimate(load_config(None, [f"model.init_from={tmp_path}", "data.tokenizer=gpt2"]))
    assert est.params == gpt2_params(3, 32, None, 16, 333)
    assert est.bytes == 16 * est.params and BYTES_PER_PARAM == 16


def test_refused_above_the_memory_available_with_the_numbers():
    cfg = load_config(None, ["model.n_layer=4", "model.n_embd=256", "model.n_head=4"])
    params = gpt2_params(4, 256, None, 128, 4096)
    with pytest.raises(UserError) as err:
        check_fits(cfg, available=(16 * params - 1, "available (test)"))
    msg = str(err.value)
    assert (
        f"{params / 1e6:,.1f}M parameters" in msg and "model.n_layer=4" in msg and "model.n_embd=256" in msg
    )
    assert f"{16 * params / 2**30:.1f} GiB" in msg and "lower model.n_layer or model.n_embd" in msg
    assert check_fits(cfg, available=(16 * params, "available (test)")).params == params


@pytest.mark.skipif(torch.cuda.is_available(), reason="compares against the machine's free memory (CPU)")
def test_cpu_memory_is_what_the_kernel_reports(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    kernel = next(
        int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemAvailable")
    )
    free, where = available_bytes()
    assert abs(free - kernel) < 0.1 * kernel and where == "available on this machine"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert abs(available_bytes()[0] - kernel / 2) < 0.1 * kernel
