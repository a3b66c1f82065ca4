"""RepDistiller / mdistiller checkpoints load into every architecture and give the reference's
logits; checkpoint files are read weights-only and checked with bounded, clear errors;
``--teacher-ckpt`` infers the architecture from RepDistiller's folder names.

The reference key names and shapes are data (``tests/data/repdistiller_state_dicts.json``,
written by ``tests/data/make_repdistiller_fixture.py`` from the reference model files, not
from kdbench's). The logits of kdbench's models are compared with functional forwards
written below from the reference ``forward`` methods (``torch.nn.functional`` on the state
dict), on random weights with random BatchNorm statistics.
"""
from __future__ import annotations

import argparse
import functools
import json
import pickle
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench import cli as kdbench_main
from kdbench.grid import GridError, build_grid
from kdbench.models import classifier_parameters, create_model, model_version
from kdbench.teachers.checkpoints import (CheckpointError, check_state_dict, infer_arch, load_checkpoint,
                                          parse_teacher_ckpt, read_state_dict)

FIXTURE = Path(__file__).resolve().parent / "data" / "repdistiller_state_dicts.json"
REF = json.loads(FIXTURE.read_text())
ARCHS = sorted(REF["architectures"])
NUM_CLASSES = REF["num_classes"]
StateDict = dict[str, Tensor]


def ref_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in REF["architectures"][arch]["state_dict"].items()}


def random_state_dict(arch: str, seed: int = 0) -> StateDict:
    """Random tensors with the reference's keys and shapes (float32): fan-in scaled weights,
    BatchNorm affine near 1/0 and random running statistics (variance in [0.5, 1.5])."""
    g = torch.Generator().manual_seed(seed)
    sd: StateDict = {}
    for key, shape in ref_shapes(arch).items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(int(torch.randint(1, 1000, (), generator=g)))
        elif key.endswith("running_var"):
            sd[key] = 0.5 + torch.rand(shape, generator=g, dtype=torch.float32)
        elif key.endswith("running_mean"):
            sd[key] = 0.1 * torch.randn(shape, generator=g, dtype=torch.float32)
        elif len(shape) == 1 and key.endswith("weight"):  # BatchNorm scale
            sd[key] = 1.0 + 0.1 * torch.randn(shape, generator=g, dtype=torch.float32)
        elif len(shape) == 1:  # biases
            sd[key] = 0.1 * torch.randn(shape, generator=g, dtype=torch.float32)
        else:
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            sd[key] = torch.randn(shape, generator=g, dtype=torch.float32) * (1.0 / fan_in) ** 0.5
    return sd


@functools.lru_cache(maxsize=None)
def built(arch: str) -> torch.nn.Module:
    """``arch`` at the fixture's class count, built once per test session (tests that load
    into it load every key, so what an earlier test left does not matter)."""
    return create_model(arch, NUM_CLASSES)


def model_with(arch: str, sd: StateDict) -> torch.nn.Module:
    model = create_model(arch, NUM_CLASSES)
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval()


# -- keys and shapes ------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_keys_and_shapes_are_the_references(arch: str) -> None:
    ours = {k: tuple(v.shape) for k, v in built(arch).state_dict().items()}
    ref = ref_shapes(arch)
    assert sorted(set(ref) - set(ours)) == [], "keys of the reference missing from ours"
    assert sorted(set(ours) - set(ref)) == [], "keys of ours the reference does not have"
    assert {k: s for k, s in ours.items() if ref[k] != s} == {}, "shape differences"
    assert list(ours) == list(ref), "same keys in the reference's registration order"


def numbered_state_dict(arch: str) -> StateDict:
    """The reference's keys and shapes, each tensor filled with its key's index (cheap, and
    every value says which key it was loaded from)."""
    return {k: torch.full(s, i, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
            for i, (k, s) in enumerate(ref_shapes(arch).items())}


@pytest.mark.parametrize("arch", ARCHS)
def test_a_reference_state_dict_loads_with_no_missing_or_unexpected_keys(arch: str) -> None:
    sd = numbered_state_dict(arch)
    model = built(arch)
    check_state_dict(model, sd, arch=arch, path="reference")
    result = model.load_state_dict(sd, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


@pytest.mark.parametrize("arch", ["resnet8", "resnet8x4", "wrn_16_2", "vgg8", "mobilenetv2", "shufflev1", "shufflev2"])
def test_a_repdistiller_checkpoint_file_loads(arch: str, tmp_path) -> None:
    sd = numbered_state_dict(arch)
    path = tmp_path / f"{arch}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save({"epoch": 240, "model": sd, "accuracy": torch.tensor(75.0)}, path)  # RepDistiller's layout
    model = create_model(arch, NUM_CLASSES)
    load_checkpoint(model, path, arch=infer_arch(path), dataset="cifar100")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


@pytest.mark.parametrize("arch", ARCHS)
def test_get_classifier_is_the_reference_head(arch: str) -> None:
    model = built(arch)
    head_key = [k for k in ref_shapes(arch) if k.endswith(".weight")][-1]  # the last layer registered
    head = model.get_classifier()
    assert isinstance(head, torch.nn.Linear) and head is model.get_submodule(head_key[: -len(".weight")])
    assert classifier_parameters(model) == {id(head.weight), id(head.bias)}


def test_model_versions() -> None:
    renamed = [a for a in ARCHS if not a.startswith("vgg")]
    assert all(model_version(a) == 2 for a in renamed)
    assert all(model_version(a) == 1 for a in ARCHS if a.startswith("vgg"))  # names were already the reference's
    assert model_version("timm:resnet18") == model_version("tv:resnet18") == 1


# -- functional forwards written from the reference models ----------------------------------
def bn(x: Tensor, sd: StateDict, p: str) -> Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=1e-5)


def conv(x: Tensor, sd: StateDict, p: str, stride: int = 1, padding: int | None = None) -> Tensor:
    """A convolution whose groups follow from the weight shape (in / weight in-channels)."""
    w = sd[f"{p}.weight"]
    pad = w.shape[-1] // 2 if padding is None else padding
    return F.conv2d(x, w, sd.get(f"{p}.bias"), stride=stride, padding=pad, groups=x.shape[1] // w.shape[1])


def linear(x: Tensor, sd: StateDict, p: str) -> Tensor:
    return F.linear(x, sd[f"{p}.weight"], sd[f"{p}.bias"])


def count(sd: StateDict, prefix: str) -> int:
    """How many numbered children ``prefix.<i>`` have keys."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return len({m.group(1) for k in sd for m in [pat.match(k)] if m})


def shuffle(x: Tensor, g: int) -> Tensor:
    """ShuffleBlock: [N,C,H,W] -> [N,g,C/g,H,W] -> [N,C/g,g,H,W] -> [N,C,H,W]."""
    n, c, h, w = x.shape
    return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def ref_resnet_cifar(x: Tensor, sd: StateDict) -> Tensor:
    """models/resnet.py ResNet.forward with BasicBlocks."""
    x = F.relu(bn(conv(x, sd, "conv1"), sd, "bn1"))
    for layer in (1, 2, 3):
        for j in range(count(sd, f"layer{layer}")):
            p, stride = f"layer{layer}.{j}", (2 if layer > 1 and j == 0 else 1)
            out = F.relu(bn(conv(x, sd, f"{p}.conv1", stride), sd, f"{p}.bn1"))
            out = bn(conv(out, sd, f"{p}.conv2"), sd, f"{p}.bn2")
            res = bn(conv(x, sd, f"{p}.downsample.0", stride), sd, f"{p}.downsample.1") \
                if f"{p}.downsample.0.weight" in sd else x
            x = F.relu(out + res)
    return linear(F.avg_pool2d(x, 8).flatten(1), sd, "fc")


def ref_resnet_v2(x: Tensor, sd: StateDict) -> Tensor:
    """models/resnetv2.py ResNet.forward (BasicBlock or Bottleneck)."""
    x = F.relu(bn(conv(x, sd, "conv1"), sd, "bn1"))
    for layer in (1, 2, 3, 4):
        for j in range(count(sd, f"layer{layer}")):
            p, stride = f"layer{layer}.{j}", (2 if layer > 1 and j == 0 else 1)
            if f"{p}.conv3.weight" in sd:  # Bottleneck: the stride is on the 3x3 conv2
                out = F.relu(bn(conv(x, sd, f"{p}.conv1"), sd, f"{p}.bn1"))
                out = F.relu(bn(conv(out, sd, f"{p}.conv2", stride), sd, f"{p}.bn2"))
                out = bn(conv(out, sd, f"{p}.conv3"), sd, f"{p}.bn3")
            else:
                out = F.relu(bn(conv(x, sd, f"{p}.conv1", stride), sd, f"{p}.bn1"))
                out = bn(conv(out, sd, f"{p}.conv2"), sd, f"{p}.bn2")
            res = bn(conv(x, sd, f"{p}.shortcut.0", stride), sd, f"{p}.shortcut.1") \
                if f"{p}.shortcut.0.weight" in sd else x
            x = F.relu(out + res)
    return linear(F.adaptive_avg_pool2d(x, 1).flatten(1), sd, "linear")


def ref_wrn(x: Tensor, sd: StateDict) -> Tensor:
    """models/wrn.py WideResNet.forward: pre-activation blocks; where in != out the input
    itself is replaced by relu(bn1(x)) and the 1x1 convShortcut reads it."""
    out = conv(x, sd, "conv1")
    for b in (1, 2, 3):
        for i in range(count(sd, f"block{b}.layer")):
            p, stride = f"block{b}.layer.{i}", (2 if b > 1 and i == 0 else 1)
            if f"{p}.convShortcut.weight" in sd:  # not equalInOut
                out = F.relu(bn(out, sd, f"{p}.bn1"))
                y = F.relu(bn(conv(out, sd, f"{p}.conv1", stride), sd, f"{p}.bn2"))
                out = conv(out, sd, f"{p}.convShortcut", stride, padding=0) + conv(y, sd, f"{p}.conv2")
            else:
                y = F.relu(bn(out, sd, f"{p}.bn1"))
                y = F.relu(bn(conv(y, sd, f"{p}.conv1", stride), sd, f"{p}.bn2"))
                out = out + conv(y, sd, f"{p}.conv2")
    out = F.relu(bn(out, sd, "bn1"))
    return linear(F.avg_pool2d(out, 8).flatten(1), sd, "fc")


def ref_vgg(x: Tensor, sd: StateDict) -> Tensor:
    """models/vgg.py VGG.forward (batch_norm=True) at 32 px: no pool3 (h != 64)."""
    def block(x: Tensor, b: int) -> Tensor:
        n = count(sd, f"block{b}")  # conv, BN (the ReLU has no keys) -> indices 0,1, 3,4, ...
        convs = sorted({int(k.split(".")[1]) for k in sd if k.startswith(f"block{b}.") and sd[k].dim() == 4})
        assert n == 2 * len(convs)
        for i, c in enumerate(convs):
            x = bn(conv(x, sd, f"block{b}.{c}"), sd, f"block{b}.{c + 1}")
            if i < len(convs) - 1:
                x = F.relu(x)
        return x

    x = F.relu(block(x, 0))
    x = F.relu(block(F.max_pool2d(x, 2, 2), 1))
    x = F.relu(block(F.max_pool2d(x, 2, 2), 2))
    x = F.relu(block(F.max_pool2d(x, 2, 2), 3))
    x = F.relu(block(x, 4))
    return linear(F.adaptive_avg_pool2d(x, 1).flatten(1), sd, "classifier")


def ref_mobile_half(x: Tensor, sd: StateDict) -> Tensor:
    """models/mobilenetv2.py MobileNetV2.forward (T=6, width 0.5, input 32)."""
    strides = [1, 1, 2, 2, 1, 2, 1]  # s of the seven (t, c, n, s) settings
    x = F.relu(bn(conv(x, sd, "conv1.0", 2), sd, "conv1.1"))
    for g, s in enumerate(strides):
        for i in range(count(sd, f"blocks.{g}")):
            p, stride = f"blocks.{g}.{i}.conv", (s if i == 0 else 1)
            y = F.relu(bn(conv(x, sd, f"{p}.0"), sd, f"{p}.1"))
            y = F.relu(bn(conv(y, sd, f"{p}.3", stride), sd, f"{p}.4"))
            y = bn(conv(y, sd, f"{p}.6"), sd, f"{p}.7")
            x = x + y if stride == 1 and x.shape[1] == y.shape[1] else y
    x = F.relu(bn(conv(x, sd, "conv2.0"), sd, "conv2.1"))
    x = F.avg_pool2d(x, 32 // 16, ceil_mode=True)
    return linear(x.flatten(1), sd, "classifier.0")


def ref_shufflev1(x: Tensor, sd: StateDict) -> Tensor:
    """models/ShuffleNetv1.py ShuffleNet.forward (groups 3; a block reading the 24-channel
    stem has an ungrouped conv1 and no shuffle)."""
    x = F.relu(bn(conv(x, sd, "conv1"), sd, "bn1"))
    for layer in (1, 2, 3):
        for i in range(count(sd, f"layer{layer}")):
            p, stride = f"layer{layer}.{i}", (2 if i == 0 else 1)
            g = 1 if x.shape[1] == 24 else 3
            out = F.relu(bn(conv(x, sd, f"{p}.conv1"), sd, f"{p}.bn1"))
            out = shuffle(out, g)
            out = F.relu(bn(conv(out, sd, f"{p}.conv2", stride), sd, f"{p}.bn2"))
            out = bn(conv(out, sd, f"{p}.conv3"), sd, f"{p}.bn3")
            if stride == 2:
                x = F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
            else:
                x = F.relu(out + x)
    return linear(F.avg_pool2d(x, 4).flatten(1), sd, "linear")


def ref_shufflev2(x: Tensor, sd: StateDict) -> Tensor:
    """models/ShuffleNetv2.py ShuffleNetV2.forward (net size 1, 1x1 stem)."""
    x = F.relu(bn(conv(x, sd, "conv1"), sd, "bn1"))
    for layer in (1, 2, 3):
        p = f"layer{layer}.0"  # DownBlock
        left = bn(conv(x, sd, f"{p}.conv1", 2), sd, f"{p}.bn1")
        left = F.relu(bn(conv(left, sd, f"{p}.conv2"), sd, f"{p}.bn2"))
        right = F.relu(bn(conv(x, sd, f"{p}.conv3"), sd, f"{p}.bn3"))
        right = bn(conv(right, sd, f"{p}.conv4", 2), sd, f"{p}.bn4")
        right = F.relu(bn(conv(right, sd, f"{p}.conv5"), sd, f"{p}.bn5"))
        x = shuffle(torch.cat([left, right], 1), 2)
        for i in range(1, count(sd, f"layer{layer}")):
            p = f"layer{layer}.{i}"  # BasicBlock, split ratio 0.5
            c = int(x.shape[1] * 0.5)
            x1, x2 = x[:, :c], x[:, c:]
            out = F.relu(bn(conv(x2, sd, f"{p}.conv1"), sd, f"{p}.bn1"))
            out = bn(conv(out, sd, f"{p}.conv2"), sd, f"{p}.bn2")
            out = F.relu(bn(conv(out, sd, f"{p}.conv3"), sd, f"{p}.bn3"))
            x = shuffle(torch.cat([x1, out], 1), 2)
    x = F.relu(bn(conv(x, sd, "conv2"), sd, "bn2"))
    return linear(F.avg_pool2d(x, 4).flatten(1), sd, "linear")


REFERENCE_FORWARD = {
    **{a: ref_resnet_cifar for a in ARCHS if REF["architectures"][a]["reference"].startswith("models/resnet.py")},
    **{a: ref_resnet_v2 for a in ARCHS if REF["architectures"][a]["reference"].startswith("models/resnetv2.py")},
    **{a: ref_wrn for a in ARCHS if a.startswith("wrn_")},
    **{a: ref_vgg for a in ARCHS if a.startswith("vgg")},
    "mobilenetv2": ref_mobile_half,
    "shufflev1": ref_shufflev1,
    "shufflev2": ref_shufflev2,
}


def test_every_architecture_has_a_reference_forward() -> None:
    assert sorted(REFERENCE_FORWARD) == ARCHS


@functools.lru_cache(maxsize=1)
def images() -> Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7), dtype=torch.float32)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_the_reference_computation(arch: str) -> None:
    sd = random_state_dict(arch, seed=1)
    model = model_with(arch, sd)
    with torch.no_grad():
        ours = model(images())
        ref = REFERENCE_FORWARD[arch](images(), sd)
    assert torch.isfinite(ref).all() and ref.std() > 1e-3, "degenerate reference logits: the test would prove nothing"
    scale = ref.abs().max()
    # float32 rounding only (about 1e-7 of the scale); a wiring difference changes logits by O(scale)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5 * scale), f"max diff {(ours - ref).abs().max():.3g}"


# -- reading checkpoint files -----------------------------------------------------------------
def small_state_dict() -> StateDict:
    return {k: v.float() if v.is_floating_point() else v for k, v in random_state_dict("resnet8").items()}


@pytest.mark.parametrize("layout", ["bare", "state_dict", "model", "net", "module_prefix", "repdistiller_last"])
def test_accepted_layouts(layout: str, tmp_path) -> None:
    sd = small_state_dict()
    payload = {
        "bare": sd,
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model": {"model": sd, "epoch": 240, "accuracy": torch.tensor(70.1)},
        "net": {"net": sd, "acc": 70.1},
        "module_prefix": {"model": {f"module.{k}": v for k, v in sd.items()}},  # nn.DataParallel
        # RepDistiller's <model>_last.pth also pickles its argparse options
        "repdistiller_last": {"opt": argparse.Namespace(model_s="resnet8", learning_rate=0.05), "model": sd},
    }[layout]
    path = tmp_path / "ckpt.pth"
    torch.save(payload, path)
    got = read_state_dict(path)
    assert list(got) == list(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


class _CreatesAFile:
    """Unpickling this calls ``open(marker, "w")``: a file appears if the loader runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(writer: str, tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"model": _CreatesAFile(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match=re.escape(str(path))) as err:
        read_state_dict(path, "teacher checkpoint")
    assert not marker.exists(), "loading the checkpoint ran code"
    assert "weights_only=True" in str(err.value) and "teacher checkpoint" in str(err.value)


def test_the_cli_refuses_a_code_running_teacher_checkpoint_before_anything_runs(tmp_path, capsys) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": _CreatesAFile(marker)}, path)
    code = kdbench_main.main(["run", "--dataset", "digits", "--pairs", "resnet14->resnet8", "--methods", "kd",
                              "--seeds", "1", "--epochs", "1", "--no-progress", "--teacher-ckpt", f"resnet14={path}",
                              "--out", str(tmp_path / "out")])
    assert code == 2 and not marker.exists()
    err = capsys.readouterr().err
    assert str(path) in err and "cannot be read as PyTorch weights" in err
    assert not (tmp_path / "out" / "runs").exists(), "nothing may run"


@pytest.mark.parametrize("content,found", [
    (b"\x00\x01garbage bytes, not a checkpoint" * 10, "cannot be read as PyTorch weights"),
    (b"", "cannot be read as PyTorch weights"),
])
def test_unreadable_files_name_the_file(content: bytes, found: str, tmp_path) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(str(path))) as err:
        read_state_dict(path)
    assert found in str(err.value) and len(str(err.value)) < 600


@pytest.mark.parametrize("payload,found", [
    ([1, 2, 3], "holds a list"),
    ({"epoch": 240, "accuracy": 70.0}, "holds a dict with keys 'epoch', 'accuracy'"),
    ({"model": {"fc.weight": [1.0, 2.0]}}, "holds a dict with keys 'model'"),
    ({}, "holds an empty dict"),
])
def test_payloads_that_are_not_state_dicts(payload, found: str, tmp_path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))) as err:
        read_state_dict(path)
    assert found in str(err.value) and "'model'" in str(err.value)


def test_a_pickled_model_is_refused_with_what_to_save_instead(tmp_path) -> None:
    path = tmp_path / "whole_model.pth"
    torch.save(create_model("resnet8", 10), path)  # the module object, not its state dict
    with pytest.raises(CheckpointError, match=re.escape(str(path))) as err:
        read_state_dict(path)
    assert "save model.state_dict(), not the model" in str(err.value)


def test_a_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")


# -- mismatches: one bounded message ----------------------------------------------------------
def test_a_wrong_architecture_gives_one_short_message_listing_what_differs(tmp_path) -> None:
    path = tmp_path / "resnet32x4_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save({"model": create_model("resnet32x4", 100).state_dict()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(create_model("wrn_40_2", 100), path, arch="wrn_40_2", dataset="cifar100")
    msg = str(err.value)
    n_missing = len(set(create_model("wrn_40_2", 100).state_dict()) - set(create_model("resnet32x4", 100).state_dict()))
    assert len(msg) < 1500, f"{len(msg)} characters"
    assert str(path) in msg and "wrn_40_2" in msg
    assert f"{n_missing} missing key(s): block1.layer.0.bn1.weight" in msg and "more)" in msg
    assert "unexpected key(s): layer1.0.conv1.weight" in msg
    assert "conv1.weight is [32, 3, 3, 3] in the checkpoint, [16, 3, 3, 3] in the model" in msg


def test_a_class_count_mismatch_is_said_plainly(tmp_path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"model": create_model("resnet8", 100).state_dict()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(create_model("resnet8", 10), path, arch="resnet8", dataset="cifar10")
    msg = str(err.value)
    assert "the checkpoint has 100 classes, dataset cifar10 has 10" in msg
    assert "missing" not in msg and "shape mismatch" not in msg  # nothing else differs


def test_old_kdbench_names_are_reported_not_loaded() -> None:
    sd = create_model("resnet8", 10).state_dict()
    old = {("classifier." + k[3:] if k.startswith("fc.") else k): v for k, v in sd.items()}  # model version 1
    with pytest.raises(CheckpointError, match=r"2 missing key\(s\): fc.weight.*2 unexpected key\(s\): classifier"):
        check_state_dict(create_model("resnet8", 10), old, arch="resnet8", path="old.pt")


# -- the architecture from RepDistiller's folder names ----------------------------------------
@pytest.mark.parametrize("folder,arch", [
    ("resnet32x4_vanilla", "resnet32x4"),
    ("resnet56_vanilla", "resnet56"),
    ("resnet110_vanilla", "resnet110"),
    ("wrn_40_2_vanilla", "wrn_40_2"),
    ("wrn_16_1_cifar100_lr_0.05_decay_0.0005_trial_0", "wrn_16_1"),
    ("vgg13_vanilla", "vgg13"),
    ("vgg13_cifar100_lr_0.05_decay_0.0005_trial_0", "vgg13"),
    ("ResNet50_vanilla", "resnet50"),
    ("ResNet18_vanilla", "resnet18"),
    ("MobileNetV2_vanilla", "mobilenetv2"),
    ("mobile_half_cifar100_lr_0.01_decay_0.0005_trial_0", "mobilenetv2"),
    ("ShuffleV1_vanilla", "shufflev1"),
    ("ShuffleV2_cifar100_lr_0.01_decay_0.0005_trial_1", "shufflev2"),
    ("S:resnet8x4_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0.0_1", "resnet8x4"),
])
def test_infer_arch_from_the_folder_name(folder: str, arch: str) -> None:
    assert infer_arch(f"/ckpts/{folder}/ckpt_epoch_240.pth") == arch
    assert parse_teacher_ckpt(f"/ckpts/{folder}/ckpt_epoch_240.pth") == (arch, f"/ckpts/{folder}/ckpt_epoch_240.pth")


@pytest.mark.parametrize("path", ["/ckpts/teachers/best.pth", "ckpt.pth", "/x/resnet999_vanilla/ckpt.pth"])
def test_an_architecture_that_cannot_be_inferred_asks_for_arch_equals_path(path: str) -> None:
    with pytest.raises(CheckpointError, match=r"write ARCH=PATH"):
        infer_arch(path)


def test_arch_equals_path_is_taken_as_given() -> None:
    assert parse_teacher_ckpt("resnet8x4=/ckpts/resnet32x4_vanilla/x.pth") == ("resnet8x4", "/ckpts/resnet32x4_vanilla/x.pth")
    with pytest.raises(CheckpointError, match="no path after"):
        parse_teacher_ckpt("resnet8x4=")


def _grid_args(*extra: str) -> argparse.Namespace:
    parser = kdbench_main.make_parser()
    return parser.parse_args(["run", "--dataset", "digits", "--pairs", "resnet14->resnet8", *extra])


def test_teacher_ckpt_without_arch_uses_the_folder_name(tmp_path) -> None:
    path = tmp_path / "resnet14_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save({"model": create_model("resnet14", 10).state_dict(), "epoch": 240}, path)
    grid = kdbench_main.grid_from_args(_grid_args("--teacher-ckpt", str(path)))
    assert grid.teachers == {"resnet14": str(path)}
    assert {s.teacher_ckpt for s in grid.expand() if s.teacher} == {str(path)}


def test_teacher_ckpt_in_an_unnamed_folder_asks_for_arch(tmp_path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save(create_model("resnet14", 10).state_dict(), path)
    with pytest.raises(GridError, match="write ARCH=PATH"):
        kdbench_main.grid_from_args(_grid_args("--teacher-ckpt", str(path)))


def test_a_checkpoint_for_an_architecture_outside_the_grid_is_an_error(tmp_path, capsys) -> None:
    path = tmp_path / "x.pt"
    torch.save(create_model("resnet14", 10).state_dict(), path)
    code = kdbench_main.main(["run", "--dataset", "digits", "--pairs", "resnet14->resnet8,resnet20->resnet8",
                              "--teacher-ckpt", f"resnet999={path}", "--dry-run", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "'resnet999' is not the teacher of any pair" in err and "resnet14, resnet20" in err
    grid = build_grid({"teachers": {"resnet8": str(path)}}, dataset="digits", pairs="resnet14->resnet8")
    with pytest.raises(GridError, match="'resnet8' is not the teacher of any pair of this grid; its teachers are "
                                        "resnet14"):
        grid.validate()  # a student is not a teacher


def test_a_mismatching_teacher_checkpoint_fails_the_grid_before_anything_trains(tmp_path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"model": create_model("resnet14", 100).state_dict()}, path)
    grid = build_grid({"teachers": {"resnet14": str(path)}}, dataset="digits", pairs="resnet14->resnet8")
    with pytest.raises(GridError, match=r"teachers.resnet14: .*the checkpoint has 100 classes, dataset digits has 10"):
        grid.validate()
    torch.save({"model": create_model("resnet20", 10).state_dict()}, path)
    with pytest.raises(GridError, match=r"does not fit architecture resnet14: 36 unexpected key\(s\)"):
        grid.validate()


# -- the teacher cache ----------------------------------------------------------------------
FAST = ["--dataset", "digits", "--seeds", "1", "--no-progress", "--batch-size", "128", "--teacher-epochs", "1",
        "--epochs", "1", "--methods", "kd"]


def _rows(out: Path) -> list[dict]:
    from kdbench.store import Store

    return list(Store(out).iter_results())


def test_a_truncated_trained_teacher_names_teacher_file_and_remedy(tmp_path) -> None:
    out = tmp_path / "out"
    assert kdbench_main.main(["run", *FAST, "--pairs", "resnet8->resnet8", "--out", str(out)]) == 0
    rows = _rows(out)
    teacher_key = next(r["teacher_key"] for r in rows if r["method"] == "kd")
    teacher = next(r for r in rows if r["run_key"] == teacher_key)
    weights = Path(teacher["run_dir"]) / "model.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short

    assert kdbench_main.main(["run", *FAST, "--pairs", "resnet8->resnet14", "--out", str(out)]) == 1
    kd = next(r for r in _rows(out) if r["method"] == "kd" and r["student"] == "resnet14")
    assert kd["status"] == "failed"
    err = kd["error"]
    assert "teacher resnet8" in err and str(weights) in err and "cannot be read" in err
    assert f"delete its run folder {teacher['run_dir']}" in err and len(err) < 1000


def test_a_supplied_checkpoint_that_does_not_fit_fails_the_run_with_a_bounded_message(tmp_path) -> None:
    from kdbench.spec import Recipe, RunSpec
    from kdbench.teachers.cache import TeacherUnavailable, load_supplied

    path = tmp_path / "t.pth"
    torch.save({"model": create_model("resnet110", 10).state_dict()}, path)
    spec = RunSpec(dataset="digits", student="resnet8", method="kd", seed=0, recipe=Recipe(epochs=1),
                   teacher="wrn_40_2", teacher_ckpt=str(path))
    with pytest.raises(TeacherUnavailable) as err:
        load_supplied(create_model("wrn_40_2", 10), spec)
    msg = str(err.value)
    assert msg.startswith("teacher wrn_40_2: teacher checkpoint") and str(path) in msg
    assert "missing key(s)" in msg and "unexpected key(s)" in msg and len(msg) < 1500

