"""Shapes, gradients and position handling of patch embed, blocks, encoder and predictor."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.blocks import MLP, Attention, Block
from model.encoder import Encoder, build_encoder
from model.patch_embed import PatchEmbed3D
from model.predictor import Predictor
from model.rope import grid_coords, rope_angles
from tests.model import TINY, single_thread


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


B = 2


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(B, 1, *TINY.img_size)


def test_patch_embed_tokens_follow_grid_order():
    pe = PatchEmbed3D(TINY.img_size, 12, 1, 8)
    x = torch.zeros(1, 1, *TINY.img_size)
    x[:, :, 5 * 12 : 6 * 12, 4 * 12 : 5 * 12, 3 * 12 : 4 * 12] = 1.0  # only patch (5, 4, 3) is non-zero
    tokens = pe(x)  # [1, 576, 8]
    assert tokens.shape == (1, 576, 8)
    differs = (tokens[0] - pe.proj.bias).abs().sum(-1) > 1e-6
    assert differs.nonzero().flatten().tolist() == [5 * 72 + 4 * 8 + 3]


def test_patch_embed_rejects_wrong_grid():
    with pytest.raises(ValueError, match="expected images \\[B, 1, 96, 108, 96\\]"):
        PatchEmbed3D(TINY.img_size, 12, 1, 8)(torch.zeros(1, 1, 96, 96, 96))


def test_block_shapes_and_gradients():
    block = Block(48, 2, MLP(48, 96))
    x = torch.randn(B, 10, 48, requires_grad=True)
    rope = rope_angles(grid_coords((8, 9, 8))[:10], 24)
    y = block(x, rope)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in block.parameters())


def test_attention_gate_scales_each_head_by_a_sigmoid_of_the_input():
    torch.manual_seed(0)
    gated, plain = Attention(48, 2, gate=True), Attention(48, 2, gate=False)
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.startswith("gate.")})
    x = torch.randn(B, 10, 48)
    rope = rope_angles(grid_coords((8, 9, 8))[:10], 24)
    with torch.no_grad():
        gated.gate.weight.zero_()
        gated.gate.bias.copy_(torch.tensor([30.0, -30.0]))  # head 0 fully open, head 1 shut
        y = gated(x, rope)
        plain.proj.weight[:, 24:] = 0.0  # the plain layer with head 1's output removed
        torch.testing.assert_close(y, plain(x, rope), atol=1e-6, rtol=1e-5)
    assert plain.gate is None and sum(p.numel() for p in gated.gate.parameters()) == 48 * 2 + 2


@pytest.mark.parametrize("use_moe", [True, False])
def test_encoder_shapes_and_gradients(images, use_moe):
    torch.manual_seed(0)
    enc = build_encoder(dataclasses.replace(TINY, use_moe=use_moe))
    assert isinstance(enc, Encoder) and enc(images).shape == (B, 576, 48)
    idx = torch.stack([torch.randperm(576)[:144] for _ in range(3 * B)]).view(3, B, 144)
    out = enc(images, idx)
    assert out.shape == (3, B, 144, 48)
    assert enc(images, idx[0]).shape == (B, 144, 48)
    out.mean().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_encoder_is_permutation_equivariant_thanks_to_rope(images):
    """Keeping all tokens in any order equals the full forward, reordered: positions travel with tokens."""
    torch.manual_seed(0)
    enc = Encoder(TINY).eval()
    full = enc(images)  # [B, N, D]
    perm = torch.stack([torch.randperm(576) for _ in range(B)])  # [B, N]
    subset = enc(images, perm)
    torch.testing.assert_close(
        subset, torch.gather(full, 1, perm.unsqueeze(-1).expand(-1, -1, 48)), atol=1e-5, rtol=1e-4
    )


def test_encoder_rejects_mismatched_index_batch(images):
    with pytest.raises(ValueError, match="with B=2"):
        Encoder(TINY)(images, torch.zeros(3, 144, dtype=torch.long))


def test_predictor_shapes_gradients_and_mask_token_per_generator():
    torch.manual_seed(0)
    pred = Predictor(TINY)
    G, K, M = 3, 144, 432
    ctx = torch.randn(G, B, K, 48, requires_grad=True)
    perm = torch.stack([torch.randperm(576) for _ in range(G * B)]).view(G, B, 576)
    ctx_idx, tgt_idx = perm[..., :K], perm[..., K:]
    out = pred(ctx, ctx_idx, tgt_idx)
    assert out.shape == (G, B, M, 48)
    out.mean().backward()
    assert ctx.grad is not None and pred.mask_tokens.grad is not None
    assert pred.mask_tokens.grad[:G].abs().sum(-1).gt(0).all()
    with torch.no_grad():  # generator 1's mask token only affects generator 1's predictions
        before = pred(ctx, ctx_idx, tgt_idx)
        pred.mask_tokens[1] += 1.0
        after = pred(ctx, ctx_idx, tgt_idx)
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])
    assert not torch.allclose(before[1], after[1])


def test_predictor_rejects_more_generators_than_mask_tokens():
    pred = Predictor(dataclasses.replace(TINY, multiscale_masks=False))  # 2 mask tokens
    idx = torch.zeros(3, 1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="3 mask generators but the predictor has 2"):
        pred(torch.zeros(3, 1, 4, 48), idx, idx)
