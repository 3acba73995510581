"""One streaming pass over the labelled volumes: every frozen representation the protocols need.

Volumes are read batch by batch (never the whole snapshot); per batch we keep only what is small:
pooled features per method, encoder tokens (optionally average-pooled over k³ cells) for the
attentive probe and early fusion, and a downsampled copy of the image for the scratch CNN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tasks.context import WarehouseContext
from tasks.evaluation.config import EvalConfig
from tasks.evaluation.data import EvalCohort, open_volumes

HIST_BINS = 32


@dataclass(frozen=True)
class FeatureBank:
    index: dict[str, int]  # volume_id -> row
    pooled: dict[str, torch.Tensor]  # method -> [N, D] float32
    tokens: dict[str, torch.Tensor]  # encoder -> [N, T, D] float16
    small: torch.Tensor  # [N, 1, x, y, z] float16 (input of the scratch CNN)

    def rows(self, volume_ids: list[str]) -> torch.Tensor:
        return torch.tensor([self.index[v] for v in volume_ids], dtype=torch.long)


def handcrafted_features(images: torch.Tensor) -> torch.Tensor:
    """QC-like metrics and an intensity histogram of the brain: images [B, 1, X, Y, Z] in [0, 1] -> [B, F].

    Per volume: foreground fraction, mean/std/SNR of brain intensities, 7 percentiles (read off a
    256-bin cumulative histogram: no sort), a 32-bin normalised histogram, its entropy (EFC-like),
    and the mean intensity of each octant (coarse layout). No learning: what any QC script computes.
    """
    out = []
    qs = torch.tensor([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    for img in images[:, 0].float():
        fg = img > 0.02
        v = img[fg] if fg.any() else img.flatten()
        fine = torch.histc(v, bins=256, min=0.0, max=1.0)
        cdf = fine.cumsum(0) / fine.sum().clamp_min(1)
        q = torch.searchsorted(cdf, qs).clamp_max(255).float() / 255.0
        hist = fine.reshape(HIST_BINS, -1).sum(1)
        hist = hist / hist.sum().clamp_min(1)
        ent = -(hist * torch.log(hist.clamp_min(1e-12))).sum()
        X, Y, Z = img.shape
        octants = F.adaptive_avg_pool3d(img[None, None], 2).flatten()
        stats = torch.stack([fg.float().mean(), v.mean(), v.std(), v.mean() / v.std().clamp_min(1e-6), ent])
        out.append(torch.cat([stats, q, hist, octants]))
    return torch.stack(out)


def readout(feature_map: torch.Tensor, regions: int) -> torch.Tensor:
    """Frozen features of a volume: the global mean, plus the mean of each of regions³ blocks.

    feature_map [B, D, x, y, z] (encoder tokens laid on their grid, or a CNN's last feature map) ->
    [B, D] for regions=1, [B, D * (1 + regions³)] otherwise. A global mean keeps *what* is in the
    volume but not *where*; ventricles, atrophy and deep white-matter lesions are defined by where, and a
    linear probe cannot recover location from a mean. Every frozen method gets the same readout.
    """
    pooled = feature_map.mean(dim=(2, 3, 4))  # [B, D]
    if regions == 1:
        return pooled
    blocks = F.adaptive_avg_pool3d(feature_map, regions).flatten(1)  # [B, D * regions³]
    return torch.cat([pooled, blocks], dim=1)


def token_map(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Tokens on their grid: [B, T, D] -> [B, D, gx, gy, gz]."""
    B, T, D = tokens.shape
    return tokens.transpose(1, 2).reshape(B, D, *grid)


def pool_tokens(tokens: torch.Tensor, grid: tuple[int, int, int], k: int) -> torch.Tensor:
    """Average tokens over k³ cells of the token grid: [B, T, D] -> [B, T/k³, D] (k=1: unchanged)."""
    if k == 1:
        return tokens
    return F.avg_pool3d(token_map(tokens, grid), k, ceil_mode=True).flatten(2).transpose(1, 2)


@torch.no_grad()
def extract_bank(
    ctx: WarehouseContext,
    cohort: EvalCohort,
    encoders: dict[str, nn.Module],
    cnn_mae: nn.Module | None,
    cfg: EvalConfig,
    token_grid: tuple[int, int, int],
) -> FeatureBank:
    """Encode every labelled volume once with every frozen model."""
    volume_ids = sorted(v for per in cohort.volumes.values() for v in per.values())
    ds = open_volumes(ctx, cohort.snapshot_id, volume_ids)
    order = [r["volume_id"] for r in ds.members]
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.num_workers, shuffle=False)
    device = torch.device(cfg.device)
    pooled: dict[str, list[torch.Tensor]] = {name: [] for name in [*encoders, "handcrafted"]}
    if cnn_mae is not None:
        pooled["cnn_mae"] = []
    tokens: dict[str, list[torch.Tensor]] = {name: [] for name in encoders}
    small = []
    for batch in loader:
        images = batch["image"]  # [B, 1, X, Y, Z]
        gpu = images.to(device)
        for name, enc in encoders.items():
            t = enc(gpu).float()  # [B, T, D]
            pooled[name].append(readout(token_map(t, token_grid), cfg.pool_regions).cpu())
            tokens[name].append(pool_tokens(t, token_grid, cfg.token_pool).half().cpu())
        if cnn_mae is not None:
            pooled["cnn_mae"].append(readout(cnn_mae.feature_map(gpu).float(), cfg.pool_regions).cpu())
        pooled["handcrafted"].append(handcrafted_features(images))
        small.append(F.avg_pool3d(images, cfg.cnn_downsample).half())
    index = {v: i for i, v in enumerate(order)}
    return FeatureBank(
        index=index,
        pooled={k: torch.cat(v) for k, v in pooled.items()},
        tokens={k: torch.cat(v) for k, v in tokens.items()},
        small=torch.cat(small),
    )
