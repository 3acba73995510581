"""3D RoPE: a rotation (norm-preserving) whose q.k products depend only on relative position."""

from __future__ import annotations

import torch

from model.rope import apply_rope, axis_dim, grid_coords, rope_angles


def test_grid_coords_follow_c_order():
    coords = grid_coords((8, 9, 8))
    assert coords.shape == (576, 3)
    n = 5 * 72 + 4 * 8 + 3  # token index of (5, 4, 3) in an 8x9x8 grid
    assert coords[n].tolist() == [5.0, 4.0, 3.0]


def test_axis_dim_splits_head_in_three_even_chunks():
    assert axis_dim(64) == 20  # ViT-B: 60 of 64 channels rotated
    assert axis_dim(24) == 8  # tiny encoder: all 24 rotated
    assert axis_dim(16) == 4  # tiny predictor: 12 rotated, 4 passed through


def test_rope_preserves_norms_and_leaves_the_remainder_untouched():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 50, 16)  # [B, H, N, hd]
    coords = torch.randint(0, 9, (2, 50, 3)).float()
    y = apply_rope(x, *rope_angles(coords, 16))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[..., 12:], x[..., 12:])
    assert not torch.allclose(y[..., :12], x[..., :12])


def test_rope_at_the_origin_is_the_identity():
    x = torch.randn(1, 2, 4, 24)
    torch.testing.assert_close(apply_rope(x, *rope_angles(torch.zeros(4, 3), 24)), x)


def test_attention_logits_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 20, 24), torch.randn(1, 1, 20, 24)
    pos_q = torch.randint(0, 8, (20, 3)).float()
    pos_k = torch.randint(0, 8, (20, 3)).float()

    def logits(shift: torch.Tensor) -> torch.Tensor:
        rq = apply_rope(q, *rope_angles(pos_q + shift, 24))
        rk = apply_rope(k, *rope_angles(pos_k + shift, 24))
        return rq @ rk.transpose(-1, -2)

    base = logits(torch.zeros(3))
    torch.testing.assert_close(logits(torch.tensor([3.0, -2.0, 5.0])), base, atol=1e-4, rtol=1e-4)
    # ...while moving only the keys changes them: positions do matter.
    moved = apply_rope(q, *rope_angles(pos_q, 24)) @ apply_rope(k, *rope_angles(pos_k + 1, 24)).transpose(-1, -2)
    assert not torch.allclose(moved, base, atol=1e-3)


def test_each_axis_has_its_own_channels():
    x = torch.randn(1, 1, 1, 24)
    for axis in range(3):
        pos = torch.zeros(1, 3)
        pos[0, axis] = 2.0
        changed = (apply_rope(x, *rope_angles(pos, 24)) - x).abs()[0, 0, 0] > 1e-6
        expected = torch.zeros(24, dtype=torch.bool)
        expected[axis * 8 : (axis + 1) * 8] = True
        assert torch.equal(changed, expected)
