"""Learned fusion of a subject's modalities: gated late fusion, gated-attention MIL, product of experts.

Why beside early concatenation and averaged logits (protocols.py): those weigh every modality alike,
or leave the weighing to one linear head over the concatenation. These three learn per subject how
much each modality counts, in three ways the literature compares:

- `fusion_gated`: one linear expert per modality gives logits; a softmax gate computed from all the
  modalities' embeddings mixes them. At initialisation the gate is uniform: averaged logits.
- `fusion_mil`: gated-attention multiple-instance pooling (Ilse, Tomczak & Welling, ICML 2018): the
  modalities are the instances of a bag; a shared embedding, attention weights from
  w^T (tanh(V h) * sigmoid(U h)), softmax over modalities, a linear head on the weighted sum.
- `fusion_poe`: product of Gaussian experts (as in multimodal VAEs): each modality gives a mean and
  a log-variance over a small latent; with a unit-Gaussian prior expert their product has precision
  1 + sum of precisions and a precision-weighted mean, which a linear head reads. An unsure modality
  (low precision) counts for little, subject by subject. (Summing independently fitted logits, the
  other reading of "product of experts", ranks subjects exactly like averaged logits, so it would add
  nothing to `fusion_late`.)

All three read every method's frozen pooled features per modality, [N, M, D] (pretrained, random
init, handcrafted, CNN-MAE alike), are small (thousands of parameters), and are trained full batch by
AdamW with an L2 penalty whose strength comes from cfg.wd_grid (the linear heads' grid, same scale)
and is chosen on val by heads.select_and_score, which never receives test targets.

The penalty falls on every weight matrix. Penalising two weight layers whose product makes the logit
(MIL: embedding x head, PoE: expert means x head) has a threshold: once 4 * s_head * s_hidden > g^2
(g: the loss slope in the product at zero), all-zero weights are a minimum and the network outputs
its bias for every subject. At the grid's top (100, i.e. 0.33 per weight at n=150) MIL and PoE did
collapse, and a constant score's tied val AUROC of exactly 0.5 then beat the noise-fitted heads of a
task without signal (benchmark-cpu-2026-11-30-v2: lesion_fusion_mil 0.500 [0.5, 0.5] for every
method). So a grid value is an upper bound: a fit whose train scores come out constant is redone with
a tenth of the strength (finally none) until the network survives; fits that survive are unchanged.
(Penalising only the read-out instead never collapses, but lets the hidden layers overfit: a planted
signal's val AUROC fell to 0.58 for MIL where the gated fusion reached 0.99.)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model.threads import one_torch_thread
from tasks.evaluation.config import EvalConfig
from tasks.evaluation.heads import target_and_loss

EPOCHS = 200  # full-batch AdamW steps
LR = 1e-2
HIDDEN = 32  # MIL instance embedding
ATTENTION = 16  # MIL attention width (L in Ilse et al.)
LATENT = 16  # PoE latent
COLLAPSED = 1e-5  # relative output spread below which a fit counts as constant (see `collapsed`)
RETRIES = 4  # penalties tried per grid value before none: hp, hp/10, hp/100, hp/1000


class GatedLateFusion(nn.Module):
    """x [N, M, D] -> [N, n_out] = sum_m gate_m(x) * expert_m(x_m), gate = softmax over M."""

    def __init__(self, n_mod: int, dim: int, n_out: int) -> None:
        super().__init__()
        self.experts = nn.Parameter(torch.randn(n_mod, dim, n_out) * 0.01)
        self.expert_bias = nn.Parameter(torch.zeros(n_mod, n_out))
        self.gate = nn.Linear(n_mod * dim, n_mod)
        nn.init.zeros_(self.gate.weight)  # uniform gate at the start: averaged logits
        nn.init.zeros_(self.gate.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per = torch.einsum("nmd,mdo->nmo", x, self.experts) + self.expert_bias  # [N, M, n_out]
        g = self.gate(x.flatten(1)).softmax(dim=-1)  # [N, M]
        return (g[..., None] * per).sum(dim=1)


class GatedAttentionMIL(nn.Module):
    """Modalities as instances: x [N, M, D] -> [N, n_out] through gated attention pooling."""

    def __init__(self, n_mod: int, dim: int, n_out: int) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim + n_mod, HIDDEN), nn.ReLU())  # features + one-hot modality
        self.V, self.U = nn.Linear(HIDDEN, ATTENTION), nn.Linear(HIDDEN, ATTENTION)
        self.w = nn.Linear(ATTENTION, 1)
        self.head = nn.Linear(HIDDEN, n_out)

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        """h [N, M, H] -> weights [N, M] summing to 1 over the modalities."""
        return self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h)))[..., 0].softmax(dim=-1)

    def instances(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, M, D] -> h [N, M, H]. Inputs are standardised per modality, so which modality an instance
        is comes from a one-hot code, not from its offset (offsets shared across modalities swamped the
        subject-to-subject variation the signal lives in)."""
        code = torch.eye(x.shape[1], dtype=x.dtype, device=x.device).expand(len(x), -1, -1)  # [N, M, M]
        return self.embed(torch.cat([x, code], dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.instances(x)  # [N, M, H]
        return self.head((self.attention(h)[..., None] * h).sum(dim=1))


class ProductOfExperts(nn.Module):
    """Per-modality Gaussian experts over a latent, multiplied with a N(0, I) prior: x [N, M, D] -> [N, n_out]."""

    def __init__(self, n_mod: int, dim: int, n_out: int) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.randn(n_mod, dim, LATENT) * dim**-0.5)
        self.mu_bias = nn.Parameter(torch.zeros(n_mod, LATENT))
        self.logvar = nn.Parameter(torch.zeros(n_mod, dim, LATENT))  # every expert equally sure at the start
        self.logvar_bias = nn.Parameter(torch.zeros(n_mod, LATENT))
        self.head = nn.Linear(LATENT, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = torch.einsum("nmd,mdk->nmk", x, self.mu) + self.mu_bias  # [N, M, K]
        logvar = (torch.einsum("nmd,mdk->nmk", x, self.logvar) + self.logvar_bias).clamp(-6.0, 6.0)
        precision = torch.exp(-logvar)  # [N, M, K]
        fused = (mu * precision).sum(dim=1) / (1.0 + precision.sum(dim=1))  # prior: mean 0, precision 1
        return self.head(fused)


NETWORKS: dict[str, type[nn.Module]] = {
    "fusion_gated": GatedLateFusion,
    "fusion_mil": GatedAttentionMIL,
    "fusion_poe": ProductOfExperts,
}


def enabled(cfg: EvalConfig) -> list[str]:
    """The learned fusion protocols this preset runs (each switched by its own EvalConfig field)."""
    flags = {"fusion_gated": cfg.run_fusion_gated, "fusion_mil": cfg.run_fusion_mil, "fusion_poe": cfg.run_fusion_poe}
    return [p for p, on in flags.items() if on]


def stack_modalities(pooled: torch.Tensor, rows: dict[str, torch.Tensor], modalities: tuple[str, ...]) -> torch.Tensor:
    """One method's pooled features of each subject's modalities: bank [V, D] -> [N, M, D]."""
    return torch.stack([pooled[rows[m]].float() for m in modalities], dim=1)


class _Standardized(nn.Module):
    """Training statistics per modality and feature, train split only. Shared across the modalities (MIL
    once did) a column's spread is mostly the offset between contrasts, and the subject-to-subject
    variation within a modality, where the label lives, shrank below what the penalised net could use."""

    def __init__(self, x: torch.Tensor, inner: nn.Module) -> None:
        super().__init__()
        mean = x.mean(dim=0)  # x [N, M, D] -> [M, D]
        std = x.std(dim=0) if len(x) > 1 else torch.ones_like(x[0])
        # A feature constant on train (a histogram bin no training volume reaches) carries nothing to learn;
        # dividing it by ~0 would turn a val/test subject's tiny deviation into a huge input.
        std = torch.where(std > 1e-6 * (1.0 + mean.abs()), std, torch.ones_like(std))
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner((x.float() - self.mean) / self.std)


def collapsed(out: torch.Tensor) -> bool:
    """Outputs [N, n_out] (logits, standardised targets) the same for every subject, to float noise: the
    penalty killed the network. Healthy fits spread over O(1); collapsed ones measured 1e-11..1e-8."""
    spread = (out.amax(dim=0) - out.amin(dim=0)).max()
    return bool(spread <= COLLAPSED * (1.0 + out.abs().max()))


def fitter(protocol: str):
    """A `fit` for heads.select_and_score: (kind, x [N, M, D], target, L2 strength, cfg, _, n_out) -> predict."""
    if protocol not in NETWORKS:
        raise ValueError(f"unknown fusion protocol {protocol!r}; valid: {', '.join(NETWORKS)}")

    def fit(kind: str, x: torch.Tensor, target: dict[str, np.ndarray], hp: float, cfg: EvalConfig, _att, n_out: int):
        from model import heads

        if x.ndim != 3:
            raise ValueError(f"{protocol} needs per-modality features [N, M, D], got shape {tuple(x.shape)}")
        x = x.float()
        t, base, to_scores = target_and_loss(kind, target)

        def train(strength: float) -> nn.Module:
            torch.manual_seed(cfg.seed)
            net = NETWORKS[protocol](x.shape[1], x.shape[2], n_out)
            model = _Standardized(x, net)
            weights = [p for p in net.parameters() if p.ndim >= 2]
            scale = strength / (2 * max(len(x), 1))  # the linear heads' 1/C scale: loss + ||w||^2 / (2 C n)

            def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return base(out, y) + scale * sum((w**2).sum() for w in weights)

            with one_torch_thread():  # tiny networks: see model.threads
                heads.fit_head(
                    model, x, t, loss, epochs=EPOCHS, lr=LR, weight_decay=0.0, batch_size=None, seed=cfg.seed
                )
            return model

        for strength in (*(hp * 0.1**k for k in range(RETRIES)), 0.0):  # see the module docstring
            model = train(strength)
            if not collapsed(heads.predict(model, x)):
                break

        def predict(z: torch.Tensor) -> np.ndarray:
            return to_scores(heads.predict(model, z.float()))

        return predict

    return fit
