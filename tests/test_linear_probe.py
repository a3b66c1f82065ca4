"""Linear-probe transfer evaluation (kdbench.probe): the classifier's optimum checked by a naive
gradient, feature extraction by hand values, cache file names. The probe of a trained folder
through ``kdbench probe`` and ``kdbench report --metric probe:<target>``: tests/test_probe_cli.py."""
import math

import torch

from kdbench import probe
from kdbench.taps import Outputs


def naive_objective_gradient(x, y, weight, bias, num_classes, wd):
    """Gradient of mean CE(softmax(W z + b), y) + wd/2 ‖W‖² at (W, b), z = standardised x."""
    n, d = len(x), len(x[0])
    mu = [sum(r[j] for r in x) / n for j in range(d)]
    sd = [math.sqrt(sum((r[j] - mu[j]) ** 2 for r in x) / n) for j in range(d)]
    gw = [[wd * weight[c][j] for j in range(d)] for c in range(num_classes)]
    gb = [0.0] * num_classes
    for r, label in zip(x, y):
        z = [(r[j] - mu[j]) / sd[j] for j in range(d)]
        logits = [sum(weight[c][j] * z[j] for j in range(d)) + bias[c] for c in range(num_classes)]
        m = max(logits)
        e = [math.exp(v - m) for v in logits]
        p = [v / sum(e) for v in e]
        for c in range(num_classes):
            g = (p[c] - (1.0 if c == label else 0.0)) / n
            gb[c] += g
            for j in range(d):
                gw[c][j] += g * z[j]
    return mu, sd, gw, gb


def test_the_linear_classifier_reaches_the_regularised_optimum():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g) * torch.tensor([1.0, 3.0, 0.5]) + 2.0
    y = torch.randint(0, 3, (40,), generator=g)
    clf = probe.fit_linear_probe(x, y, 3, probe.ProbeConfig(weight_decay=0.1, max_iter=200))
    std, lin = clf[0], clf[1]
    mu, sd, gw, gb = naive_objective_gradient(x.tolist(), y.tolist(), lin.weight.tolist(), lin.bias.tolist(), 3, 0.1)
    assert torch.allclose(std.mu, torch.tensor(mu), atol=1e-5) and torch.allclose(std.sd, torch.tensor(sd), atol=1e-5)
    assert max(abs(v) for row in gw for v in row) < 1e-4 and max(abs(v) for v in gb) < 1e-4


def test_separable_classes_are_probed_perfectly():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    y = torch.arange(60) % 3
    x = centres[y] + 0.3 * torch.randn(60, 2, generator=g)
    clf = probe.fit_linear_probe(x[:45], y[:45], 3, probe.ProbeConfig())
    assert (clf(x[45:]).argmax(1) == y[45:]).all()


class MeanModel(torch.nn.Module):
    """Stub student: the embedding is the input itself, flattened."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward_taps(self, x):
        return Outputs(logits=x.new_zeros(len(x), 2), embedding=x.flatten(1))


def test_features_are_resized_and_normalised_with_the_source_statistics():
    images = torch.full((3, 3, 2, 2), 51, dtype=torch.uint8)  # 51/255 = 0.2
    images[1] = 204  # 0.8
    f = probe.extract_features(MeanModel(), images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 4, batch_size=2)
    assert f.shape == (3, 3 * 4 * 4)
    assert torch.allclose(f[0], torch.full((48,), (0.2 - 0.5) / 0.25))
    assert torch.allclose(f[1], torch.full((48,), (0.8 - 0.5) / 0.25))


def test_probe_file_names_are_safe_for_any_target_name(tmp_path):
    path = probe.probe_path(tmp_path, "imagefolder:/data/my set", "abc")
    assert path == tmp_path / "probes" / "imagefolder__data_my_set-abc.json"
