"""Objective of Takahashi et al. 2022 (science.md section 4).

L = l_ce * CE(labelled) + l_ech * ECH(labelled) + l_lds * LDS(labelled + unlabelled).
Labels y are int64 (B,): 1 real, 0 bogus, -1 unlabelled (enters only the LDS term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.networks import real_score_s


class LossConfig(BaseModel):
    """Weights and parameters of the three-term objective."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    l_ce: float = Field(1.0, ge=0.0, description="weight of the cross-entropy term")
    l_ech: float = Field(0.0, ge=0.0, description="weight of the exp-cross-hinge (AUC surrogate) term")
    l_lds: float = Field(0.0, ge=0.0, description="weight of the VAT local distributional smoothness term")
    ech_margin: float = Field(1.0, ge=0.0, description="margin xi of the exp-cross-hinge, in score units")
    ech_max_exponent: float = Field(
        20.0, gt=0.0, description="the hinge is clamped to this before exp() against overflow"
    )
    vat_xi: float = Field(
        0.1, gt=0.0, description="finite-difference step of the VAT power iteration (normalised-input units)"
    )
    vat_eps: float = Field(
        1.0, gt=0.0, description="L2 radius of the adversarial perturbation per stamp, in units of the normalised input"
    )
    vat_power_iters: int = Field(1, ge=1, description="power iterations to find the adversarial direction")

    @model_validator(mode="after")
    def _some_weight(self):
        if self.l_ce + self.l_ech + self.l_lds <= 0:
            raise ValueError("l_ce + l_ech + l_lds must be > 0")
        return self


def _zero(t: torch.Tensor) -> torch.Tensor:
    """A zero that stays attached to the graph (so backward() works on empty terms)."""
    return t.sum() * 0.0


def cross_entropy(
    logits: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy of labelled samples.

    logits (B, 1) -> BCE-with-logits; (B, 2) -> softmax CE. y (B,) in {0, 1}.
    class_weights (2,) optional: weight of bogus, real samples (normalised by their sum
    over the batch, as torch's weighted CE does).
    """
    if logits.shape[0] == 0:
        return _zero(logits)
    if logits.shape[-1] == 1:
        z, t = logits[:, 0], y.to(logits.dtype)
        per = F.binary_cross_entropy_with_logits(z, t, reduction="none")
        if class_weights is None:
            return per.mean()
        w = class_weights.to(logits.dtype)[y]
        return (per * w).sum() / w.sum()
    weight = None if class_weights is None else class_weights.to(logits.dtype)
    return F.cross_entropy(logits, y, weight=weight)


def exp_cross_hinge(
    s: torch.Tensor, y: torch.Tensor, margin: float = 1.0, max_exponent: float = 20.0
) -> torch.Tensor:
    """Exp-cross-hinge, mean over all (positive i, negative j) pairs of
    exp(min([s_j - s_i + margin]_+, max_exponent)). s, y: (B,). 0 when a class is missing.
    """
    pos, neg = s[y == 1], s[y == 0]  # (P,), (N,)
    if pos.numel() == 0 or neg.numel() == 0:
        return _zero(s)
    d = neg[None, :] - pos[:, None] + margin  # (P, N)
    return torch.exp(torch.clamp(F.relu(d), max=max_exponent)).mean()


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """(B, K) logits -> (B, K') log-probabilities; a single logit becomes Bernoulli (B, 2)."""
    if logits.shape[-1] == 1:
        z = logits[:, 0]
        return torch.stack([F.logsigmoid(-z), F.logsigmoid(z)], dim=-1)
    return F.log_softmax(logits, dim=-1)


def _kl(logp_target: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(p || q), (B,)."""
    return (logp_target.exp() * (logp_target - logq)).sum(dim=-1)


def _unit(d: torch.Tensor) -> torch.Tensor:
    """Scale every sample of d (B, ...) to unit L2 norm."""
    norm = d.flatten(1).norm(dim=1).clamp(min=1e-12)
    return d / norm.view(-1, *([1] * (d.dim() - 1)))


def _check_vat_model(model) -> None:
    if not (hasattr(model, "normalize") and hasattr(model, "forward_normalized")):
        raise TypeError("VAT needs a model with .normalize(x) and .forward_normalized(xn)")


def vat_direction(
    model, xn: torch.Tensor, clean_logp: torch.Tensor, xi: float, power_iters: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Unit adversarial direction d (same shape as xn) by power iteration (Miyato et al.).

    xn: normalised input (B, C, H, W); clean_logp (B, K) detached log-probabilities.
    d <- unit(grad_d KL(p(x) || p(x + xi d))), starting from Gaussian noise drawn with
    ``generator``; converges to the top eigenvector of the Fisher information at x.
    """
    d = _unit(torch.randn(xn.shape, generator=generator, device=xn.device, dtype=xn.dtype))
    xn = xn.detach()
    for _ in range(power_iters):
        d = d.detach().requires_grad_(True)
        kl = _kl(clean_logp, _log_probs(model.forward_normalized(xn + xi * d))).sum()
        (g,) = torch.autograd.grad(kl, d)
        d = _unit(g)
    return d.detach()


def _lds_normalized(model, xn, clean_logits, xi, eps, power_iters, generator) -> torch.Tensor:
    clean_logp = _log_probs(clean_logits).detach()
    d = vat_direction(model, xn, clean_logp, xi, power_iters, generator)
    return _kl(clean_logp, _log_probs(model.forward_normalized(xn.detach() + eps * d))).mean()


def vat_lds(
    model, x: torch.Tensor, xi: float = 0.1, eps: float = 1.0, power_iters: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """LDS = mean_b KL(p(y|x_b) || p(y|x_b + r_adv,b)), ||r_adv,b||_2 = eps.

    x: raw stamps (B, C, H, W); the perturbation acts on ``model.normalize(x)``; the clean
    prediction is the detached target. Needs no labels.
    """
    _check_vat_model(model)
    if x.shape[0] == 0:
        return x.new_zeros(())
    xn = model.normalize(x).detach()
    with torch.no_grad():
        clean = model.forward_normalized(xn)
    return _lds_normalized(model, xn, clean, xi, eps, power_iters, generator)


def total_loss(
    model, x: torch.Tensor, y: torch.Tensor, cfg: LossConfig,
    generator: torch.Generator | None = None, class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted objective on a batch; returns (loss scalar, {'ce','ech','lds','total'} floats).

    x (B, 3, 29, 29) raw; y (B,) int64 with -1 for unlabelled samples.
    """
    _check_vat_model(model)
    xn = model.normalize(x)
    logits = model.forward_normalized(xn)  # (B, K)
    lab = y >= 0
    loss = _zero(logits)
    parts = {"ce": 0.0, "ech": 0.0, "lds": 0.0}
    if cfg.l_ce > 0:
        ce = cross_entropy(logits[lab], y[lab], class_weights)
        loss = loss + cfg.l_ce * ce
        parts["ce"] = float(ce.detach())
    if cfg.l_ech > 0:
        ech = exp_cross_hinge(real_score_s(logits[lab]), y[lab], cfg.ech_margin, cfg.ech_max_exponent)
        loss = loss + cfg.l_ech * ech
        parts["ech"] = float(ech.detach())
    if cfg.l_lds > 0:
        lds = _lds_normalized(
            model, xn.detach(), logits.detach(), cfg.vat_xi, cfg.vat_eps, cfg.vat_power_iters, generator
        )
        loss = loss + cfg.l_lds * lds
        parts["lds"] = float(lds.detach())
    parts["total"] = float(loss.detach())
    return loss, parts
