"""The model zoo: uniform taps, shapes, gradients, pre-activations, parameter counts.

Every registered model is tested automatically (``MODELS.list()``), plus a few timm /
torchvision adapters. Models are built once per module (cached) at 100 classes, 32x32.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench.models import create_model, feature_parameters, model_version
from kdbench.registry import MODELS, UnknownNameError
from kdbench.taps import Outputs, has_preact, measure

NUM_CLASSES = 100
EXTERNAL = ["timm:resnet18", "tv:resnet18", "tv:mobilenet_v3_small"]
NATIVE = MODELS.list()
ALL = NATIVE + EXTERNAL
POST_RELU_FAMILIES = {"resnet_cifar", "resnet_imagenet", "vgg", "shufflenet"}


@functools.lru_cache(maxsize=None)
def build(name: str, image_size: int = 32, in_chans: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, NUM_CLASSES, in_chans=in_chans, image_size=image_size)


def batch(image_size: int = 32, in_chans: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, in_chans, image_size, image_size, generator=g)


def family(name: str) -> str | None:
    return MODELS.meta(name).get("family")


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# -- taps -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_taps_match_measure_and_forward(name: str) -> None:
    model = build(name)
    info = measure(model, (3, 32, 32))
    model.eval()
    x = batch()
    with torch.no_grad():
        out = model.forward_taps(x, preact=has_preact(model))
        logits = model(x)
    assert isinstance(out, Outputs)
    assert info.num_classes == NUM_CLASSES and out.logits.shape == (2, NUM_CLASSES)
    assert torch.allclose(out.logits, logits, atol=1e-5), "forward_taps logits differ from forward"
    assert out.embedding.shape == (2, info.embedding_dim)
    assert len(out.stages) == info.num_stages >= 1
    for i, s in enumerate(out.stages):
        assert s.shape == (2, *info.stage_shape(i))
    if name in NATIVE or out.stem is not None:
        assert out.stem is not None and out.stem.shape == (2, info.stem_channels, *info.stem_size)
    assert (out.preact is not None) == has_preact(model) == info.has_preact
    # the classifier maps the embedding to the logits
    assert torch.allclose(model.get_classifier()(out.embedding), logits, atol=1e-5)
    head = {id(p) for p in model.get_classifier().parameters()}
    assert head and not any(id(p) in head for p in feature_parameters(model))


@pytest.mark.parametrize("name", ALL)
def test_backward_reaches_every_parameter_and_bn_updates_once(name: str) -> None:
    model = build(name)
    model.train()
    model.zero_grad(set_to_none=True)
    bns = bn_layers(model)
    before = [int(bn.num_batches_tracked) for bn in bns]
    out = model.forward_taps(batch(), preact=has_preact(model))
    after = [int(bn.num_batches_tracked) for bn in bns]
    assert all(a == b + 1 for a, b in zip(after, before)), "a BatchNorm ran more or less than once"
    maps = [*out.stages, out.embedding] + ([out.stem] if out.stem is not None else []) + list(out.preact or ())
    loss = F.cross_entropy(out.logits, torch.tensor([0, 1])) + sum(m.pow(2).mean() for m in maps)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    model.zero_grad(set_to_none=True)


# -- pre-activations --------------------------------------------------------------------------
@pytest.mark.parametrize("name", NATIVE)
def test_preact(name: str) -> None:
    model = build(name)
    if not has_preact(model):
        pytest.skip("no pre-activation taps")
    model.train()
    out = model.forward_taps(batch(), preact=True)
    assert out.preact is not None and len(out.preact) == len(out.stages)
    for p, s in zip(out.preact, out.stages):
        assert p.shape == s.shape
    fam = family(name)
    if fam in POST_RELU_FAMILIES:
        for i, (p, s) in enumerate(zip(out.preact, out.stages)):
            assert (p < 0).any(), f"preact {i} has no negative value: not a pre-activation"
            assert torch.equal(F.relu(p), s), f"relu(preact {i}) != stage {i}"
    elif fam == "mobilenet":  # linear bottlenecks: the stage itself
        for p, s in zip(out.preact, out.stages):
            assert torch.equal(p, s) and (s < 0).any()
    elif fam == "wrn":
        # the final BN's output feeds the embedding: relu -> global average pool
        emb = F.relu(out.preact[-1]).mean((2, 3))
        assert torch.allclose(emb, out.embedding, atol=1e-5)
        model.eval()
        with torch.no_grad():
            out = model.forward_taps(batch(), preact=True)
            for bn, p, s in zip(model.get_bn_before_relu(), out.preact, out.stages):
                assert torch.allclose(p, bn(s), atol=1e-5), "preact != next BN(stage)"
                assert not torch.allclose(p, s)
    else:
        pytest.skip(f"no preact semantics known for family {fam!r}")
    # without the flag nothing extra is returned, and the pass computes the same values
    plain = model.forward_taps(batch(), preact=False)
    assert plain.preact is None
    assert torch.allclose(plain.logits, out.logits, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(plain.stages, out.stages, strict=True))


def test_post_relu_stage_tensors_are_not_aliased_by_preact() -> None:
    # in-place ReLUs must not overwrite the kept pre-activation
    model = build("vgg8")
    model.eval()
    with torch.no_grad():
        out = model.forward_taps(batch(), preact=True)
    assert all(p.data_ptr() != s.data_ptr() for p, s in zip(out.preact, out.stages))


# -- shapes and sizes -------------------------------------------------------------------------
_R = ((16, 32), [(16, 32), (32, 16), (64, 8)], 64)
_RX4 = ((32, 32), [(64, 32), (128, 16), (256, 8)], 256)
_VGG = ((64, 32), [(128, 16), (256, 8), (512, 4), (512, 4)], 512)
_BASIC = ((64, 32), [(64, 32), (128, 16), (256, 8), (512, 4)], 512)
_BOTTLE = ((64, 32), [(256, 32), (512, 16), (1024, 8), (2048, 4)], 2048)
# name -> ((stem C, stem size), [(C, size) per stage], embedding dim) at 32x32 (REFERENCE §3)
EXPECTED_32 = {
    **{f"resnet{d}": _R for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _RX4,
    "resnet32x4": _RX4,
    "wrn_16_1": ((16, 32), [(16, 32), (32, 16), (64, 8)], 64),
    "wrn_40_1": ((16, 32), [(16, 32), (32, 16), (64, 8)], 64),
    "wrn_16_2": ((16, 32), [(32, 32), (64, 16), (128, 8)], 128),
    "wrn_40_2": ((16, 32), [(32, 32), (64, 16), (128, 8)], 128),
    **{f"vgg{d}": _VGG for d in (8, 11, 13, 16, 19)},
    "mobilenetv2": ((16, 16), [(12, 16), (16, 8), (48, 4), (160, 2)], 1280),
    "shufflev1": ((24, 32), [(240, 16), (480, 8), (960, 4)], 960),
    "shufflev2": ((24, 32), [(116, 16), (232, 8), (464, 4)], 1024),
    "resnet18": _BASIC,
    "resnet34": _BASIC,
    **{f"resnet{d}": _BOTTLE for d in (50, 101, 152)},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_32))
def test_expected_shapes_at_32(name: str) -> None:
    info = measure(build(name), (3, 32, 32))
    (stem_c, stem_s), stages, emb = EXPECTED_32[name]
    assert (info.stem_channels, info.stem_size) == (stem_c, (stem_s, stem_s))
    assert list(zip(info.stage_channels, (h for h, _ in info.stage_sizes))) == stages
    assert all(h == w for h, w in info.stage_sizes)
    assert info.embedding_dim == emb


# Parameter counts at 100 classes published in the CRD paper (Tian et al., ICLR 2020), in
# millions. All agree within 0.6 %; mobilenetv2 is RepDistiller's "mobile_half" (width 0.5,
# expansion 6, the 1x1 expansion conv kept also in the t=1 block).
PUBLISHED_M = {
    "wrn_40_2": 2.25,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "resnet56": 0.86,
    "resnet20": 0.28,
    "resnet110": 1.74,
    "resnet32": 0.47,
    "resnet32x4": 7.43,
    "resnet8x4": 1.23,
    "vgg13": 9.46,
    "vgg8": 3.96,
    "shufflev1": 0.95,
    "shufflev2": 1.36,
    "resnet50": 23.71,
    "mobilenetv2": 0.81,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_parameter_counts_match_published(name: str) -> None:
    n = sum(p.numel() for p in build(name).parameters()) / 1e6
    assert abs(n / PUBLISHED_M[name] - 1) <= 0.03, f"{name}: {n:.3f}M vs published {PUBLISHED_M[name]}M"


# (name, image size) -> expected size of the last stage map
LARGER_INPUTS = [
    ("vgg8", 64, 4),
    ("vgg8", 84, 5),
    ("vgg8", 96, 6),
    ("resnet8x4", 64, 16),
    ("resnet8x4", 84, 21),
    ("resnet18", 84, 11),
    ("shufflev2", 64, 8),
    ("shufflev2", 84, 11),
    ("mobilenetv2", 84, 6),
    ("wrn_16_2", 96, 24),
]


@pytest.mark.parametrize("name,size,last", LARGER_INPUTS)
def test_larger_inputs(name: str, size: int, last: int) -> None:
    model = build(name, image_size=size)
    info = measure(model, (3, size, size))
    assert info.stage_sizes[-1] == (last, last)
    assert info.num_classes == NUM_CLASSES
    assert info.embedding_dim == EXPECTED_32[name][2]


@pytest.mark.parametrize("name", ["resnet20", "wrn_16_2", "vgg8", "mobilenetv2", "shufflev1", "shufflev2", "resnet18", "tv:resnet18", "timm:resnet18"])
def test_in_chans(name: str) -> None:
    model = create_model(name, 10, in_chans=1, image_size=32)
    model.eval()
    with torch.no_grad():
        out = model.forward_taps(batch(in_chans=1))
    assert out.logits.shape == (2, 10)


# -- registry errors ----------------------------------------------------------------------
def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UnknownNameError, match="resnet8x4"):
        MODELS.get("resnet8x5")
    with pytest.raises(UnknownNameError, match="timm:resnet18"):
        MODELS.get("timm:resnet18x")
    with pytest.raises(UnknownNameError, match="tv:mobilenet_v3_small"):
        MODELS.get("tv:mobilenet_v3_smal")


def test_registration_metadata() -> None:
    assert {"resnet8x4", "wrn_40_2", "vgg13", "mobilenetv2", "shufflev1", "shufflev2", "resnet50"} <= set(NATIVE)
    for name in NATIVE:
        meta = MODELS.meta(name)
        assert meta.get("family"), name
        assert meta.get("lightweight") == (name in {"mobilenetv2", "shufflev1", "shufflev2"}), name
        assert model_version(name) == meta.get("version", 1) >= 1, name


def test_model_version_is_checked(monkeypatch) -> None:
    monkeypatch.setattr(MODELS, "meta", lambda name: {"version": "2"})  # a plugin registering a string
    with pytest.raises(ValueError, match="version='2'; a version is an integer >= 1"):
        model_version("toy")


# -- external adapters --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "mobilenetv3_small_050"])
def test_timm_adapter_logits_equal_model_forward(name: str) -> None:
    adapter = build(f"timm:{name}")
    assert type(adapter).__name__ == "TimmTapAdapter"
    adapter.eval()
    x = batch()
    with torch.no_grad():
        out = adapter.forward_taps(x)
        ref = adapter.model(x)
    assert torch.allclose(out.logits, ref, atol=1e-5)
    m = adapter.model
    assert out.embedding.shape == (2, getattr(m, "head_hidden_size", None) or m.num_features)


def test_hook_adapter_selects_the_stage_ends_of_timm_resnet() -> None:
    from kdbench.students.external import HookTapAdapter, TimmTapAdapter

    timm_model = build("timm:resnet18").model
    native = TimmTapAdapter(timm_model)
    hooked = HookTapAdapter(timm_model, in_chans=3, image_size=32, head=timm_model.get_classifier())
    assert hooked.tap_modules == ["act1", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    hooked.eval()
    x = batch()
    with torch.no_grad():
        a, b = native.forward_taps(x), hooked.forward_taps(x)
    assert torch.equal(a.stem, b.stem) and torch.equal(a.embedding, b.embedding)
    assert all(torch.equal(s, t) for s, t in zip(a.stages, b.stages, strict=True))
    assert hooked._capture is None  # nothing kept alive between calls


def test_tv_hook_selection() -> None:
    assert build("tv:resnet18").tap_modules == ["relu", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert build("tv:mobilenet_v3_small").tap_modules[0] == "features.0"
