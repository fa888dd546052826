"""Real/bogus networks: the Simple CNN and the SE-ResNet with csSE and FRN.

Every network takes raw stamps x of shape (B, 3, 29, 29) float32, channels (new, ref,
sub), normalises them inside (``Normalize``) and returns logits of shape (B, n_logits)
with n_logits 1 (sigmoid) or 2 (softmax, index 1 = real). The split
``forward(x) = forward_normalized(normalize(x))`` lets virtual adversarial training
perturb the normalised input (``models.losses.vat_lds``).

Configs are frozen dataclasses (one per network, as in nanoGPT's ``model.py``);
``config_to_dict`` / ``config_from_dict`` round-trip them through ``model.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from tasks.types import STAMP_SIZE

NormKind = Literal["minmax", "zscore", "none"]
_NORMS = ("minmax", "zscore", "none")


# ---------------------------------------------------------------------------- normalise
class Normalize(nn.Module):
    """Per-stamp, per-channel normalisation; NaN/inf-safe.

    'minmax' (the paper): (u - min u) / (max u - min u + eps), in [0, 1].
    'zscore': (u - mean u) / (std u + eps).
    'none':   u unchanged.
    Non-finite pixels are ignored by the statistics and set to 0 in the output; a channel
    with no finite pixel becomes all 0.
    x: (B, C, H, W) -> (B, C, H, W)
    """

    def __init__(self, kind: NormKind = "minmax", eps: float = 1e-6):
        super().__init__()
        if kind not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {kind!r}")
        self.kind = kind
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        finite = torch.isfinite(x)  # (B, C, H, W)
        x0 = torch.where(finite, x, torch.zeros_like(x))
        if self.kind == "none":
            return x0
        any_finite = finite.flatten(2).any(dim=2)[..., None, None]  # (B, C, 1, 1)
        if self.kind == "minmax":
            big = torch.full_like(x, float("inf"))
            mn = torch.where(finite, x, big).amin(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
            mx = torch.where(finite, x, -big).amax(dim=(2, 3), keepdim=True)
            mn = torch.where(any_finite, mn, torch.zeros_like(mn))
            mx = torch.where(any_finite, mx, torch.zeros_like(mx))
            out = (x0 - mn) / (mx - mn + self.eps)
        else:  # zscore
            n = finite.sum(dim=(2, 3), keepdim=True).clamp(min=1).to(x.dtype)  # (B, C, 1, 1)
            mean = x0.sum(dim=(2, 3), keepdim=True) / n
            dev = torch.where(finite, x0 - mean, torch.zeros_like(x0))
            std = torch.sqrt((dev * dev).sum(dim=(2, 3), keepdim=True) / n)
            out = dev / (std + self.eps)
        return torch.where(finite, out, torch.zeros_like(out))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, eps={self.eps}"


class RBNet(nn.Module):
    """Base: raw stamps (B, 3, 29, 29) -> logits (B, n_logits)."""

    n_logits: int
    normalize: Normalize

    def forward_normalized(self, xn: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_normalized(self.normalize(x))


def _check_common(n_logits: int, norm: str, in_channels: int) -> None:
    if n_logits not in (1, 2):
        raise ValueError(f"n_logits must be 1 or 2, got {n_logits}")
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")


# ---------------------------------------------------------------------------- simple
@dataclass(frozen=True)
class SimpleConfig:
    """The survey's earlier VGG-like classifier.

    Default (the published 1-logit variant), shapes from a 29x29 stamp:
      conv5x5 valid 32 -> (32,25,25) -> pool2 -> (32,12,12) -> conv3x3 valid 64 ->
      (64,10,10) -> pool2 -> (64,5,5) -> dropout -> 1600 -> 128 -> 64 -> 1: 234,177 params.
    The paper's variant (``SimpleConfig.paper()``) flattens (64,6,6) = 2304 and ends in 2
    logits: we get 6x6 by ceil-mode pooling (Keras ``padding='same'`` pooling):
      25 -> ceil(25/2)=13 -> conv3x3 -> 11 -> ceil(11/2)=6: 324,354 params.
    ('same' padding on the first conv gives 29 -> 14 -> 12 -> 6 with the same count.)
    """

    n_logits: int = 1
    pool_ceil: bool = False
    conv_channels: tuple[int, int] = (32, 64)
    dense: tuple[int, int] = (128, 64)
    dropout: float = 0.3
    norm: NormKind = "minmax"
    in_channels: int = 3
    stamp_size: int = STAMP_SIZE

    kind = "simple"  # class attribute, not a field

    def __post_init__(self):
        _check_common(self.n_logits, self.norm, self.in_channels)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if len(self.conv_channels) != 2 or min(self.conv_channels) < 1:
            raise ValueError(f"conv_channels must be two positive ints, got {self.conv_channels}")
        if len(self.dense) != 2 or min(self.dense) < 1:
            raise ValueError(f"dense must be two positive ints, got {self.dense}")
        if self.feature_size() < 1:
            raise ValueError(f"stamp_size {self.stamp_size} too small for the Simple network")

    @classmethod
    def paper(cls, **kw) -> "SimpleConfig":
        """Takahashi et al. 2022 variant: flatten (64, 6, 6), 2 logits."""
        return cls(**{"n_logits": 2, "pool_ceil": True, **kw})

    def feature_size(self) -> int:
        """Spatial side after the second pooling (5 by default, 6 with pool_ceil)."""
        pool = (lambda n: -(-n // 2)) if self.pool_ceil else (lambda n: n // 2)
        return pool(pool(self.stamp_size - 4) - 2)


class SimpleCNN(RBNet):
    def __init__(self, config: SimpleConfig = SimpleConfig()):
        super().__init__()
        c = config
        self.config = c
        self.n_logits = c.n_logits
        self.normalize = Normalize(c.norm)
        c1, c2 = c.conv_channels
        self.conv1 = nn.Conv2d(c.in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 3)
        self.pool = nn.MaxPool2d(2, ceil_mode=c.pool_ceil)
        self.drop = nn.Dropout(c.dropout)
        f = c.feature_size()
        self.fc1 = nn.Linear(c2 * f * f, c.dense[0])
        self.fc2 = nn.Linear(c.dense[0], c.dense[1])
        self.head = nn.Linear(c.dense[1], c.n_logits)

    def forward_normalized(self, xn: torch.Tensor) -> torch.Tensor:
        h = self.pool(F.relu(self.conv1(xn)))  # (B, 32, 12, 12) [13 with pool_ceil]
        h = self.pool(F.relu(self.conv2(h)))  # (B, 64, 5, 5)  [6 with pool_ceil]
        h = self.drop(h).flatten(1)  # (B, 1600) [2304]
        h = F.relu(self.fc1(h))  # (B, 128)
        h = F.relu(self.fc2(h))  # (B, 64)
        return self.head(h)  # (B, n_logits)


# ---------------------------------------------------------------------------- complex
class FRN(nn.Module):
    """Filter Response Normalization with optional TLU (Singh & Krishnan 2020).

    nu2 = mean_{H,W} x^2;  y = gamma * x / sqrt(nu2 + eps) + beta;  TLU: z = max(y, tau).
    Per-sample, per-channel: no batch statistics (stamps in a batch are correlated).
    x: (B, C, H, W) -> (B, C, H, W)
    """

    def __init__(self, channels: int, eps: float = 1e-6, tlu: bool = True):
        super().__init__()
        self.eps = float(eps)
        self.tlu = tlu
        self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.tau = nn.Parameter(torch.zeros(1, channels, 1, 1)) if tlu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nu2 = x.pow(2).mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        y = self.gamma * x * torch.rsqrt(nu2 + self.eps) + self.beta
        return torch.maximum(y, self.tau) if self.tau is not None else y


class TLU(nn.Module):
    """Thresholded linear unit max(x, tau), learned tau per channel (used after the add)."""

    def __init__(self, channels: int):
        super().__init__()
        self.tau = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, self.tau)


class CSSE(nn.Module):
    """Concurrent spatial and channel squeeze & excitation (Roy et al. 2018).

    cSE: GAP -> FC(C, C/r) -> ReLU -> FC(C/r, C) -> sigmoid, scales channels.
    sSE: conv1x1(C, 1) -> sigmoid, scales positions.  Output: cSE(x) + sSE(x) (their 'add').
    x: (B, C, H, W) -> (B, C, H, W)
    """

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.spatial = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean(dim=(2, 3))  # (B, C)
        c = torch.sigmoid(self.fc2(F.relu(self.fc1(z))))[:, :, None, None]  # (B, C, 1, 1)
        s = torch.sigmoid(self.spatial(x))  # (B, 1, H, W)
        return x * c + x * s


class SEBlock(nn.Module):
    """Residual block: conv3x3(stride) -> FRN+TLU -> conv3x3 -> FRN -> csSE, + skip -> TLU.

    The skip is the identity when shape is kept, else conv3x3(stride) -> FRN (no TLU).
    With stride 2 and padding 1: side n -> floor((n - 1) / 2) + 1 (29 -> 15 -> 8 -> 4).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, reduction: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.frn1 = FRN(c_out, tlu=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.frn2 = FRN(c_out, tlu=False)
        self.se = CSSE(c_out, reduction)
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                FRN(c_out, tlu=False),
            )
        else:
            self.skip = nn.Identity()
        self.act = TLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.frn1(self.conv1(x))  # (B, c_out, n', n')
        h = self.se(self.frn2(self.conv2(h)))  # (B, c_out, n', n')
        return self.act(h + self.skip(x))


@dataclass(frozen=True)
class ComplexConfig:
    """SE-ResNet with csSE and FRN.

    stem: conv5x5 'same' (in_channels -> stem_width) -> FRN+TLU, side 29.
    stage k (k = 0..len(widths)-1): ``depth`` SEBlocks of width widths[k]; the first block
    of every stage but the first has stride 2 (29 -> 15 -> 8 -> 4 -> 2 ...).
    Head: global average pooling -> (B, widths[-1]) -> dropout -> linear -> n_logits.

    Default (3 stages, 32/64/128, depth 1): (32,29,29) -> (64,15,15) -> (128,8,8) -> 128 -> 2.
    The paper's end point (256, 4, 4): widths=(32, 64, 128, 256) or (64, 128, 256, 256).
    """

    widths: tuple[int, ...] = (32, 64, 128)
    depth: int = 1
    stem_width: int = 32
    se_reduction: int = 8
    dropout: float = 0.0
    n_logits: int = 2
    norm: NormKind = "minmax"
    in_channels: int = 3
    stamp_size: int = STAMP_SIZE

    kind = "complex"

    def __post_init__(self):
        _check_common(self.n_logits, self.norm, self.in_channels)
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be a non-empty tuple of positive ints, got {self.widths}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.stem_width < 1:
            raise ValueError(f"stem_width must be >= 1, got {self.stem_width}")
        if self.se_reduction < 1:
            raise ValueError(f"se_reduction must be >= 1, got {self.se_reduction}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def stage_shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) after the stem and after each stage, for a stamp_size input."""
        n = self.stamp_size
        out = [(self.stem_width, n, n)]
        for k, w in enumerate(self.widths):
            if k > 0:
                n = (n - 1) // 2 + 1
            out.append((w, n, n))
        return out


class SEResNet(RBNet):
    def __init__(self, config: ComplexConfig = ComplexConfig()):
        super().__init__()
        c = config
        self.config = c
        self.n_logits = c.n_logits
        self.normalize = Normalize(c.norm)
        self.stem = nn.Sequential(
            nn.Conv2d(c.in_channels, c.stem_width, 5, padding=2, bias=False),
            FRN(c.stem_width, tlu=True),
        )
        blocks, c_in = [], c.stem_width
        for k, w in enumerate(c.widths):
            for j in range(c.depth):
                stride = 2 if (k > 0 and j == 0) else 1
                blocks.append(SEBlock(c_in, w, stride, c.se_reduction))
                c_in = w
        self.stages = nn.Sequential(*blocks)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c_in, c.n_logits)

    def features(self, xn: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after the stem and after each stage (for shape checks)."""
        h = self.stem(xn)
        out = [h]
        i = 0
        for _ in self.config.widths:
            for _ in range(self.config.depth):
                h = self.stages[i](h)
                i += 1
            out.append(h)
        return out

    def forward_normalized(self, xn: torch.Tensor) -> torch.Tensor:
        h = self.stem(xn)  # (B, stem_width, 29, 29)
        h = self.stages(h)  # (B, widths[-1], s, s): s = 8 for 3 stages, 4 for 4
        h = h.mean(dim=(2, 3))  # (B, widths[-1]) global average pooling
        return self.head(self.drop(h))  # (B, n_logits)


# ---------------------------------------------------------------------------- helpers
NetConfig = SimpleConfig | ComplexConfig
_KINDS = {"simple": (SimpleConfig, SimpleCNN), "complex": (ComplexConfig, SEResNet)}


def network_from_config(config: NetConfig) -> RBNet:
    """Instantiate the network a config describes."""
    for cfg_cls, net_cls in _KINDS.values():
        if isinstance(config, cfg_cls):
            return net_cls(config)
    raise TypeError(f"net_config must be SimpleConfig or ComplexConfig, got {type(config).__name__}")


def build_network(kind: Literal["simple", "complex"], **cfg) -> RBNet:
    """``build_network('complex', widths=(16, 32))`` -> an SEResNet."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {tuple(_KINDS)}, got {kind!r}")
    return network_from_config(_KINDS[kind][0](**cfg))


def config_to_dict(config: NetConfig) -> dict:
    """JSON-ready dict with a 'kind' key."""
    d = asdict(config)
    return {"kind": config.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}}


def config_from_dict(d: dict) -> NetConfig:
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"network config 'kind' must be one of {tuple(_KINDS)}, got {kind!r}")
    cls = _KINDS[kind][0]
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {kind} network config fields: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def score(logits: torch.Tensor) -> torch.Tensor:
    """P(real), shape (B,): sigmoid of a single logit, or softmax[:, 1] of two."""
    if logits.shape[-1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=-1)[:, 1]


def real_score_s(logits: torch.Tensor) -> torch.Tensor:
    """Score s (B,): real logit - bogus logit (2 logits) or the logit itself (1 logit)."""
    if logits.shape[-1] == 1:
        return logits[:, 0]
    return logits[:, 1] - logits[:, 0]


class ExportWrapper(nn.Module):
    """Raw stamps (B, 3, 29, 29) float32 -> P(real) (B,) in [0, 1]; eval mode only."""

    def __init__(self, net: RBNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return score(self.net(x))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
