import math

import pytest
import torch

from models.networks import (
    FRN, ComplexConfig, ExportWrapper, Normalize, SEResNet, SimpleCNN, SimpleConfig, build_network,
    config_from_dict, config_to_dict, n_params, real_score_s, score,
)

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: robust timings on a shared 2-core machine (oversubscription)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def test_simple_parameter_counts():
    assert n_params(SimpleCNN(SimpleConfig())) == 234_177
    paper = SimpleConfig.paper()
    assert paper.feature_size() == 6
    assert n_params(SimpleCNN(paper)) == 324_354
    x = torch.randn(3, 3, 29, 29)
    assert SimpleCNN(SimpleConfig()).eval()(x).shape == (3, 1)
    assert SimpleCNN(paper).eval()(x).shape == (3, 2)


def test_complex_intermediate_shapes():
    cfg = ComplexConfig(widths=(8, 16, 32, 64), stem_width=8)  # paper's end point at small width
    net = SEResNet(cfg).eval()
    feats = net.features(net.normalize(torch.randn(2, 3, 29, 29)))
    shapes = [tuple(f.shape[1:]) for f in feats]
    assert shapes == [(8, 29, 29), (8, 29, 29), (16, 15, 15), (32, 8, 8), (64, 4, 4)]
    assert shapes == cfg.stage_shapes()
    assert net(torch.randn(5, 3, 29, 29)).shape == (5, 2)
    default = ComplexConfig().stage_shapes()
    assert default[-1] == (128, 8, 8)


def test_frn_matches_formula():
    torch.manual_seed(0)
    frn = FRN(4, eps=1e-6, tlu=True)
    with torch.no_grad():
        frn.gamma.copy_(torch.rand(1, 4, 1, 1) + 0.5)
        frn.beta.copy_(torch.randn(1, 4, 1, 1))
        frn.tau.copy_(torch.randn(1, 4, 1, 1))
    x = torch.randn(2, 4, 5, 5, dtype=torch.float32)
    out = frn(x)
    for b in range(2):
        for c in range(4):
            v = x[b, c]
            nu2 = float((v**2).mean())
            y = frn.gamma[0, c, 0, 0] * v / math.sqrt(nu2 + 1e-6) + frn.beta[0, c, 0, 0]
            z = torch.maximum(y, frn.tau[0, c, 0, 0])
            assert torch.allclose(out[b, c], z, atol=1e-5)


def test_normalize_minmax_nan_safe():
    x = torch.randn(2, 3, 29, 29) * 50 + 1000
    x[0, 1, 3, 4] = float("nan")
    x[1, 2] = float("nan")  # whole channel missing
    out = Normalize("minmax")(x)
    assert torch.isfinite(out).all()
    assert out[0, 0].min() == 0 and abs(float(out[0, 0].max()) - 1) < 1e-5
    assert out[0, 1, 3, 4] == 0 and abs(float(out[0, 1].max()) - 1) < 1e-5
    assert (out[1, 2] == 0).all()
    z = Normalize("zscore")(x)
    assert torch.isfinite(z).all() and abs(float(z[0, 0].mean())) < 1e-4
    with pytest.raises(ValueError, match="norm"):
        Normalize("bogus")


def test_score_functions():
    l1 = torch.tensor([[0.0], [2.0]])
    assert torch.allclose(score(l1), torch.sigmoid(l1[:, 0]))
    assert torch.equal(real_score_s(l1), l1[:, 0])
    l2 = torch.tensor([[1.0, 3.0], [0.0, -1.0]])
    assert torch.allclose(score(l2), torch.softmax(l2, 1)[:, 1])
    assert torch.equal(real_score_s(l2), torch.tensor([2.0, -1.0]))
    p = ExportWrapper(build_network("complex", widths=(4, 8), stem_width=4)).eval()(torch.randn(3, 3, 29, 29))
    assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all()


def test_config_validation_and_roundtrip():
    with pytest.raises(ValueError, match="n_logits"):
        SimpleConfig(n_logits=3)
    with pytest.raises(ValueError, match="widths"):
        ComplexConfig(widths=())
    with pytest.raises(ValueError, match="kind"):
        build_network("vgg")
    for cfg in (SimpleConfig.paper(), ComplexConfig(widths=(4, 8), depth=2)):
        assert config_from_dict(config_to_dict(cfg)) == cfg
