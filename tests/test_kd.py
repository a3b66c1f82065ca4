"""KD (Hinton 2015) golden values, computed with a plain loop from the formula."""
import math

import torch

from kdbench.config import resolve_config
from kdbench.methods._common import kl_div_t
from kdbench.methods.kd import KD
from kdbench.taps import Outputs


def naive_kd(zs, zt, T):
    """T² · mean_i Σ_c p_t log(p_t / p_s) with softened softmaxes, element by element."""
    total = 0.0
    for i in range(len(zs)):
        es = [math.exp(v / T) for v in zs[i]]
        et = [math.exp(v / T) for v in zt[i]]
        ps = [v / sum(es) for v in es]
        pt = [v / sum(et) for v in et]
        total += sum(p * math.log(p / q) for p, q in zip(pt, ps))
    return T * T * total / len(zs)


def test_kl_div_t_matches_naive_formula():
    zs = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    zt = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    for T in (1.0, 4.0):
        got = kl_div_t(torch.tensor(zs), torch.tensor(zt), T).item()
        assert abs(got - naive_kd(zs, zt, T)) < 1e-6


def test_hand_checkable_cases():
    z = torch.tensor([[3.0, -1.0, 0.2]])
    assert kl_div_t(z, z, 4.0).abs().item() < 1e-7  # identical logits: zero
    # two classes, T=1: student uniform, teacher [e/(1+e), 1/(1+e)]
    p = math.e / (1 + math.e)
    expected = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    got = kl_div_t(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]), 1.0).item()
    assert abs(got - expected) < 1e-7


def test_kd_loss_is_weighted_and_defaults_are_the_reference_ones():
    cfg = resolve_config(KD, {})
    assert (cfg.temperature, cfg.ce_weight, cfg.kd_weight) == (4.0, 0.1, 0.9)
    zs, zt = [[0.3, -0.2, 1.5, 0.0]], [[1.0, 0.5, -0.5, 2.0]]
    m = KD(cfg, None, None, None)  # type: ignore[arg-type]
    s = Outputs(logits=torch.tensor(zs), embedding=torch.zeros(1, 2))
    t = Outputs(logits=torch.tensor(zt), embedding=torch.zeros(1, 2))
    terms = m.loss(s, t, None, None)
    assert set(terms) == {"loss_kd"}
    assert abs(terms["loss_kd"].item() - 0.9 * naive_kd(zs, zt, 4.0)) < 1e-6
