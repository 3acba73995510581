"""Methods that train a network rather than a head: the scratch CNN, the CNN-MAE, full fine-tuning.

All three read the same fixed splits as the frozen protocols; model selection (the epoch kept) uses
the validation split only, and test inputs are scored once at the end.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from torch import nn

from tasks.context import WarehouseContext
from tasks.evaluation.config import EvalConfig
from tasks.evaluation.data import open_volumes
from tasks.evaluation.heads import _torch_target
from tasks.evaluation.stats import HIGHER_IS_BETTER, METRICS, metric_value

log = logging.getLogger("mrifoundry.evaluate")


def _loss(kind: str):
    from model import heads

    return {
        "binary": heads.binary_loss,
        "multiclass": heads.multiclass_loss,
        "regression": heads.regression_loss,
        "survival": heads.cox_loss,
    }[kind]


def _out(kind: str, out: torch.Tensor) -> np.ndarray:
    return out.softmax(-1).numpy() if kind == "multiclass" else out[:, 0].numpy()


def pretrain_cnn_mae(ctx: WarehouseContext, snapshot_id: str, cfg: EvalConfig) -> nn.Module:
    """Masked-autoencoder pretraining of a small ResNet on an unlabelled snapshot, streamed in batches."""
    from model.cnn import CNNMAE, ResNet3d

    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    mae = CNNMAE(ResNet3d(width=cfg.cnn_width, downsample=cfg.cnn_downsample)).to(device)
    ds = open_volumes(ctx, snapshot_id)
    gen = torch.Generator().manual_seed(cfg.seed)
    sampler = torch.utils.data.RandomSampler(
        ds, replacement=True, num_samples=cfg.mae_steps * cfg.mae_batch, generator=gen
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.mae_batch, sampler=sampler, num_workers=cfg.num_workers)
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-3, weight_decay=0.05)
    mae.train()
    losses = []
    for step, batch in enumerate(loader):
        loss = mae.loss(batch["image"].to(device), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            log.info("cnn-mae step %d/%d loss %.4f", step, cfg.mae_steps, losses[-1])
    encoder = mae.encoder.eval()
    encoder.mae_losses = losses  # kept for the report
    return encoder


def train_scratch_cnn(
    kind: str,
    x_tr: torch.Tensor,
    t_tr: dict[str, np.ndarray],
    x_va: torch.Tensor,
    t_va: dict[str, np.ndarray],
    cfg: EvalConfig,
) -> nn.Module:
    """Supervised ResNet on downsampled images [n, 1, x, y, z]; keeps the epoch with the best val metric."""
    from model.cnn import ResNet3d
    from model.heads import predict

    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    n_out = int(t_tr["y"].max()) + 1 if kind == "multiclass" else 1
    net = ResNet3d(n_out=n_out, width=cfg.cnn_width, downsample=1).to(device)
    target = _torch_target(kind, t_tr)
    mean, std = 0.0, 1.0
    if kind == "regression":
        mean, std = float(target.float().mean()), float(target.float().std().clamp_min(1e-6))
        target = (target.float() - mean) / std
    loss_fn, metric = _loss(kind), METRICS[kind]
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.cnn_lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(cfg.seed)
    bs = len(x_tr) if kind == "survival" else 8  # Cox needs whole risk sets
    best, best_state = -np.inf, copy.deepcopy(net.state_dict())
    for _ in range(cfg.cnn_epochs):
        net.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(x_tr), min(bs, 32)):
            idx = perm[i : i + min(bs, 32)]
            loss = loss_fn(net(x_tr[idx].float().to(device)).cpu(), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val_pred = _out(kind, predict(net.cpu(), x_va.float(), 32)) * (std if kind == "regression" else 1) + (
            mean if kind == "regression" else 0
        )
        net.to(device)
        v = metric_value(metric, t_va, val_pred) if len(x_va) else float("nan")
        if np.isfinite(v) and sign * v > best:
            best, best_state = sign * v, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    net.eval().cpu()
    net.target_scale = (mean, std)
    return net


def scratch_scores(net: nn.Module, kind: str, x: torch.Tensor) -> np.ndarray:
    from model.heads import predict

    mean, std = net.target_scale
    s = _out(kind, predict(net, x.float(), 32))
    return s * std + mean if kind == "regression" else s


class _PooledClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, dim: int) -> None:
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))  # tokens [B, T, D] -> [B, 1]


def finetune_encoder(
    ctx: WarehouseContext,
    snapshot_id: str,
    encoder: nn.Module,
    dim: int,
    train: tuple[list[str], np.ndarray],
    val: tuple[list[str], np.ndarray],
    test_ids: list[str],
    cfg: EvalConfig,
) -> np.ndarray:
    """Fine-tune encoder + linear head end to end on a binary task; best val epoch scores the test volumes."""
    from model.heads import binary_loss

    device = torch.device(cfg.device)
    model = _PooledClassifier(copy.deepcopy(encoder), dim).to(device)
    tr_ids, tr_y = train[0][: cfg.finetune_max_train], train[1][: cfg.finetune_max_train]
    y_of = dict(zip(tr_ids, tr_y.tolist(), strict=True))
    ds_tr = open_volumes(ctx, snapshot_id, tr_ids)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(
        ds_tr, batch_size=cfg.batch_size, shuffle=True, generator=gen, num_workers=cfg.num_workers
    )
    opt = torch.optim.AdamW(
        [
            {"params": model.encoder.parameters(), "lr": cfg.finetune_lr},
            {"params": model.head.parameters(), "lr": 10 * cfg.finetune_lr},
        ],
        weight_decay=0.05,
    )

    @torch.no_grad()
    def score(ids: list[str]) -> np.ndarray:
        model.eval()
        if not ids:
            return np.zeros(0)
        ds = open_volumes(ctx, snapshot_id, ids)
        order = [r["volume_id"] for r in ds.members]
        dl = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
        s = torch.cat([model(b["image"].to(device))[:, 0].float().cpu() for b in dl]).numpy()
        pos = {v: i for i, v in enumerate(order)}
        return s[[pos[v] for v in ids]]

    best, best_state = -np.inf, copy.deepcopy(model.state_dict())
    for epoch in range(cfg.finetune_epochs):
        model.train()
        for b in loader:
            y = torch.tensor([y_of[v] for v in b["volume_id"]], dtype=torch.float32)
            loss = binary_loss(model(b["image"].to(device)).cpu(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        v = metric_value("auroc", {"y": val[1]}, score(val[0]))
        log.info("fine-tune epoch %d: val AUROC %.3f", epoch, v)
        if np.isfinite(v) and v > best:
            best, best_state = v, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return score(test_ids)
