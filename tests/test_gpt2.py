"""reviveformer.architectures.gpt2 against the model itself: unit j's weights as the module says they are must
reproduce what the MLP's output loses when unit j is silenced by a hook (no layout assumed); lookups through
wrappers; the site registry's places in a GPT-2 block."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from reviveformer import architectures
from reviveformer.architectures import Site, SiteLocation, gpt2, register_site, unregister_site

N_EMBD, N_INNER, N_LAYER = 64, 96, 2  # n_inner != 4 * n_embd: a swapped (in, out) layout would not even fit


def tiny_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=N_LAYER,
        n_embd=N_EMBD,
        n_inner=N_INNER,
        n_head=2,
        n_positions=32,
        vocab_size=50,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(cfg).eval().double()
    with torch.no_grad():  # biases are zero at init: give them values so a wrong bias would show
        for block in model.transformer.h:
            block.mlp.c_fc.bias.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("layer,unit", [(0, 0), (0, 41), (1, N_INNER - 1)])
def test_unit_contribution_by_hand_equals_the_mlp_output_lost_when_the_unit_is_silenced(layer, unit):
    model = tiny_model()
    mlp = model.transformer.h[layer].mlp
    x = torch.randn(3, 5, N_EMBD, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def silence(module, args, out):
        out = out.clone()
        out[..., unit] = 0
        return out

    with torch.no_grad():
        full = mlp(x)
        handle = mlp.act.register_forward_hook(silence)
        try:
            without = mlp(x)
        finally:
            handle.remove()
        # by hand: pre-activation of unit j per token, its activation, times its outgoing weights
        (incoming,), (bias,) = gpt2.incoming_weights(mlp), gpt2.incoming_biases(mlp)
        pre = x @ incoming.view[unit] + bias[unit]
        post = torch.nn.functional.gelu(pre, approximate="tanh")  # gelu_new
        by_hand = post[..., None] * gpt2.outgoing_weights(mlp)[0].view[unit]
    assert (full - without).abs().max() > 1e-3  # the unit matters, so the comparison can fail
    torch.testing.assert_close(full - without, by_hand, rtol=1e-9, atol=1e-12)


def test_unit_views_write_through_to_the_parameters():
    model = tiny_model()
    mlp = model.transformer.h[1].mlp
    with torch.no_grad():
        gpt2.incoming_weights(mlp)[0].view[7] = 0
        gpt2.outgoing_weights(mlp)[0].view[9] = 0
    assert (mlp.c_fc.weight == 0).sum() == N_EMBD and (mlp.c_fc.weight[:, 7] == 0).all()
    assert (mlp.c_proj.weight == 0).sum() == N_EMBD and (mlp.c_proj.weight[9, :] == 0).all()
    mask = torch.zeros_like(mlp.c_fc.weight, dtype=torch.bool)
    mask[:5, 3] = True
    assert gpt2.incoming_weights(mlp)[0].unit_rows(mask).sum(dim=1).tolist() == [
        5 if j == 3 else 0 for j in range(N_INNER)
    ]


def test_widths_and_per_unit_parameters_from_the_config():
    model = tiny_model()
    block = model.transformer.h[0]
    assert gpt2.mlp_units(block.mlp) == gpt2.width(block, "n_inner") == N_INNER
    assert gpt2.width(block, "n_embd") == N_EMBD
    assert gpt2.per_unit_parameters(block.mlp) == N_EMBD + 1 + N_EMBD
    block.mlp.c_proj.weight.requires_grad_(False)
    assert gpt2.per_unit_parameters(block.mlp) == N_EMBD + 1


def test_blocks_and_activation_through_a_compile_wrapper():
    model = tiny_model()
    wrapped = torch.compile(model)  # not run: only the wrapper is looked through
    assert gpt2.blocks(wrapped) is model.transformer.h
    assert [m is b.mlp for m, b in zip(gpt2.mlps(wrapped), model.transformer.h, strict=True)] == [
        True
    ] * N_LAYER
    assert gpt2.blocks(model.transformer) is model.transformer.h  # a bare GPT2Model too
    block = model.transformer.h[1]
    gpt2.set_mlp_activation(block, nn.PReLU())
    assert isinstance(block.mlp.act, nn.PReLU) and block.mlp.act.weight.dtype == torch.float64
    assert gpt2.block_module(block, "attn.c_proj", 1) is block.attn.c_proj


def test_not_a_gpt2_model_and_not_a_module_are_named():
    with pytest.raises(ValueError, match="Sequential is not a GPT-2 model"):
        gpt2.blocks(nn.Sequential(nn.Linear(2, 2)))
    block = tiny_model().transformer.h[0]
    del block.mlp.act  # a plain function where the module was (nn.Module refuses to assign one over it)
    block.mlp.act = torch.tanh
    with pytest.raises(ValueError, match=r"transformer.h\[0\].mlp.act is a builtin_function_or_method"):
        gpt2.block_module(block, "mlp.act", 0)


def test_a_model_finds_its_architecture_and_every_site_its_module():
    model = tiny_model()
    assert architectures.of(torch.compile(model)) is gpt2
    assert architectures.of(model.transformer.h[0].mlp) is gpt2  # a GPT2MLP keeps no config: GPT-2
    block = model.transformer.h[0]
    places = {s: gpt2.block_module(block, gpt2.site_location(s)[0], 0) for s in architectures.site_names()}
    assert places == {"mlp_pre": block.mlp.act, "mlp_post": block.mlp.act, "attn_out": block.attn.c_proj}
    assert [gpt2.site_location(s)[1] for s in places] == ["input", "output", "output"]


def test_a_site_of_ones_own_is_placed_per_architecture():
    with pytest.raises(ValueError, match="no architecture bert"):
        register_site(Site("ln1_out", "n_embd", "test"), bert=SiteLocation("ln_1", "output"))
    assert "ln1_out" not in architectures.site_names()  # refused before anything was added
    register_site(Site("ln1_out", "n_embd", "test"), gpt2=SiteLocation("ln_1", "output"))
    try:
        assert gpt2.site_location("ln1_out") == ("ln_1", "output")
        with pytest.raises(ValueError, match="site 'ln1_out' has no location in a gated MLP"):
            architectures.llama.site_location("ln1_out")
    finally:
        unregister_site("ln1_out")
    assert "ln1_out" not in gpt2.SITES and "ln1_out" not in architectures.site_names()
    with pytest.raises(ValueError, match="unknown site 'ln1_out'"):
        gpt2.site_location("ln1_out")
