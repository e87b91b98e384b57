"""The bench's reference model: a plain PyTorch GPT written here, independently of transformers, with the shapes
of the HF GPT-2 the bench measures (so its MFU says what the hardware does for this model, not only what HF's
implementation does): token + position embedding, pre-LN blocks, causal attention through
`scaled_dot_product_attention(is_causal=True)`, a GELU (tanh, GPT-2's gelu_new) MLP 4x wide, a final LayerNorm,
the LM head tied to the token embedding. No dropout (the bench's GPT-2 has none either)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.fc_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        # (B, T, 3D) -> 3 x (B, H, T, D/H)
        q, k, v = self.qkv(self.ln_1(x)).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D/H)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class ReferenceGPT(nn.Module):
    """`forward(ids, labels)` gives the mean next-token cross-entropy (labels shifted here, as HF does);
    `forward(ids)` the logits (B, T, vocab)."""

    def __init__(self, n_layer: int, n_embd: int, block: int, vocab: int, n_head: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        # GPT-2's initialisation: N(0, 0.02), zero biases, residual projections scaled by 1/sqrt(2 n_layer)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, ids: Tensor, labels: Tensor | None = None) -> Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.wte(ids) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T  # the tied head
        if labels is None:
            return logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())


def reference_gpt(n_layer: int, n_embd: int, block: int, vocab: int, dev) -> ReferenceGPT:
    """The reference at a bench shape, heads as the bench's GPT-2 has them (64 wide)."""
    return ReferenceGPT(n_layer, n_embd, block, vocab, max(1, n_embd // 64)).to(dev).train()
