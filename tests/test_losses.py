import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from models.losses import LossConfig, cross_entropy, exp_cross_hinge, total_loss, vat_direction, vat_lds, _log_probs
from models.networks import build_network

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: robust timings on a shared 2-core machine (oversubscription)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def test_ech_equals_brute_force():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(13, generator=g, dtype=torch.float64) * 3
    y = torch.tensor([1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0])
    margin, cap = 0.7, 4.0
    terms = [
        math.exp(min(max(float(s[j] - s[i]) + margin, 0.0), cap))
        for i, j in itertools.product(range(13), range(13)) if y[i] == 1 and y[j] == 0
    ]
    got = exp_cross_hinge(s, y, margin, max_exponent=cap)
    assert abs(float(got) - sum(terms) / len(terms)) < 1e-12
    # one class missing: 0, and still differentiable
    s1 = s.clone().requires_grad_(True)
    z = exp_cross_hinge(s1, torch.ones(13, dtype=torch.long))
    z.backward()
    assert float(z.detach()) == 0.0 and torch.equal(s1.grad, torch.zeros(13, dtype=torch.float64))
    # clamped against overflow
    assert torch.isfinite(exp_cross_hinge(torch.tensor([-1e6, 1e6]), torch.tensor([1, 0])))


class LinearSoftmax(nn.Module):
    """logits = W x + b on flattened input; identity normalisation."""

    def __init__(self, W, b):
        super().__init__()
        self.W, self.b = nn.Parameter(W), nn.Parameter(b)

    def normalize(self, x):
        return x

    def forward_normalized(self, xn):
        return xn.flatten(1) @ self.W.T + self.b

    def forward(self, x):
        return self.forward_normalized(x)


def test_vat_direction_matches_closed_form():
    rng = np.random.default_rng(0)
    K, D = 3, 12
    W = torch.tensor(rng.normal(size=(K, D)), dtype=torch.float64)
    b = torch.tensor(rng.normal(size=K), dtype=torch.float64)
    model = LinearSoftmax(W, b)
    x = torch.tensor(rng.normal(size=(4, 1, 3, 4)), dtype=torch.float64)
    logp = _log_probs(model(x)).detach()
    d = vat_direction(model, x, logp, xi=1e-6, power_iters=20, generator=torch.Generator().manual_seed(0))
    for k in range(4):
        p = logp[k].exp().numpy()
        fisher = W.numpy().T @ (np.diag(p) - np.outer(p, p)) @ W.numpy()  # Hessian of KL at r=0
        v = np.linalg.eigh(fisher)[1][:, -1]
        cos = abs(float(d[k].flatten().numpy() @ v)) / float(d[k].norm())
        assert cos > 0.99


def test_vat_lds_and_total_loss_with_unlabelled():
    torch.manual_seed(0)
    net = build_network("simple", n_logits=2, dropout=0.0)
    x = torch.randn(8, 3, 29, 29)
    lds = vat_lds(net, x, xi=0.1, eps=1.0, power_iters=1, generator=torch.Generator().manual_seed(0))
    assert float(lds.detach()) > 0
    cfg = LossConfig(l_ce=0.5, l_ech=0.3, l_lds=0.2)
    y = torch.tensor([1, 0, -1, -1, 1, 0, -1, 1])
    loss, parts = total_loss(net, x, y, cfg, torch.Generator().manual_seed(0))
    lab = y >= 0
    ce = float(cross_entropy(net(x)[lab], y[lab]).detach())
    assert abs(parts["ce"] - ce) < 1e-5
    assert abs(parts["total"] - (0.5 * parts["ce"] + 0.3 * parts["ech"] + 0.2 * parts["lds"])) < 1e-4
    loss.backward()
    # all-unlabelled batch: only LDS, still finite
    loss2, parts2 = total_loss(net, x, torch.full((8,), -1), cfg, torch.Generator().manual_seed(0))
    assert parts2["ce"] == 0 and parts2["ech"] == 0 and math.isfinite(float(loss2.detach()))


def test_cross_entropy_one_logit_and_weights():
    logits = torch.tensor([[2.0], [-1.0], [0.5]])
    y = torch.tensor([1, 0, 0])
    ref = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.float())
    assert torch.allclose(cross_entropy(logits, y), ref)
    w = torch.tensor([1.0, 3.0])
    two = torch.cat([torch.zeros_like(logits), logits], 1)
    assert torch.allclose(cross_entropy(two, y, w), nn.functional.cross_entropy(two, y, weight=w))


def test_loss_config_validation():
    with pytest.raises(ValueError, match="l_ce"):
        LossConfig(l_ce=0, l_ech=0, l_lds=0)
    with pytest.raises(ValueError, match="vat_eps"):
        LossConfig(vat_eps=0)
    with pytest.raises(ValueError):
        LossConfig(foo=1)
