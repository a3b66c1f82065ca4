"""Write ``repdistiller_state_dicts.json``: the state-dict key names and shapes of the CIFAR
model zoo of RepDistiller (github.com/HobbitLong/RepDistiller, ``models/``; mdistiller's
``mdistiller/models/cifar/`` is the same zoo) at 100 classes and 32x32 input.

The enumeration below was written by reading the reference model files
(``resnet.py``, ``resnetv2.py``, ``wrn.py``, ``vgg.py``, ``mobilenetv2.py``,
``ShuffleNetv1.py``, ``ShuffleNetv2.py``) and follows *their* module trees: registration
order, attribute names, ``nn.Sequential`` indices (ReLUs and pools included where they
take an index), conv bias flags and groups. It deliberately imports nothing from kdbench,
so the fixture is an independent record of the reference, not of our models.

Run ``python tests/data/make_repdistiller_fixture.py`` to regenerate the JSON.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

NUM_CLASSES = 100
OUT = Path(__file__).with_name("repdistiller_state_dicts.json")
log = logging.getLogger("make_repdistiller_fixture")


class Keys:
    """An ordered ``{key: shape}`` builder mirroring ``nn.Module.state_dict()``."""

    def __init__(self) -> None:
        self.d: dict[str, list[int]] = {}

    def conv(self, name: str, cin: int, cout: int, k: int, groups: int = 1, bias: bool = False) -> None:
        self.d[f"{name}.weight"] = [cout, cin // groups, k, k]
        if bias:
            self.d[f"{name}.bias"] = [cout]

    def bn(self, name: str, c: int) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            self.d[f"{name}.{p}"] = [c]
        self.d[f"{name}.num_batches_tracked"] = []

    def linear(self, name: str, cin: int, cout: int) -> None:
        self.d[f"{name}.weight"] = [cout, cin]
        self.d[f"{name}.bias"] = [cout]


# -- models/resnet.py: ResNet(depth, num_filters, 'basicblock') ------------------------------
def cifar_resnet(depth: int, filters: list[int]) -> dict:
    k = Keys()
    n = (depth - 2) // 6
    k.conv("conv1", 3, filters[0], 3)
    k.bn("bn1", filters[0])
    inplanes = filters[0]
    for li, (planes, stride) in enumerate(zip(filters[1:], (1, 2, 2)), start=1):
        for j in range(n):
            p = f"layer{li}.{j}"
            k.conv(f"{p}.conv1", inplanes, planes, 3)
            k.bn(f"{p}.bn1", planes)
            k.conv(f"{p}.conv2", planes, planes, 3)
            k.bn(f"{p}.bn2", planes)
            if j == 0 and (stride != 1 or inplanes != planes):
                k.conv(f"{p}.downsample.0", inplanes, planes, 1)
                k.bn(f"{p}.downsample.1", planes)
            inplanes = planes
    k.linear("fc", filters[3], NUM_CLASSES)
    return k.d


# -- models/resnetv2.py: ResNet(block, num_blocks) ------------------------------------------
def resnet_v2(bottleneck: bool, num_blocks: list[int]) -> dict:
    k = Keys()
    exp = 4 if bottleneck else 1
    k.conv("conv1", 3, 64, 3)
    k.bn("bn1", 64)
    in_planes = 64
    for li, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)), start=1):
        for j in range(n):
            s = stride if j == 0 else 1
            p = f"layer{li}.{j}"
            if bottleneck:
                k.conv(f"{p}.conv1", in_planes, planes, 1)
                k.bn(f"{p}.bn1", planes)
                k.conv(f"{p}.conv2", planes, planes, 3)
                k.bn(f"{p}.bn2", planes)
                k.conv(f"{p}.conv3", planes, planes * 4, 1)
                k.bn(f"{p}.bn3", planes * 4)
            else:
                k.conv(f"{p}.conv1", in_planes, planes, 3)
                k.bn(f"{p}.bn1", planes)
                k.conv(f"{p}.conv2", planes, planes, 3)
                k.bn(f"{p}.bn2", planes)
            if s != 1 or in_planes != exp * planes:
                k.conv(f"{p}.shortcut.0", in_planes, exp * planes, 1)
                k.bn(f"{p}.shortcut.1", exp * planes)
            in_planes = planes * exp
    k.linear("linear", 512 * exp, NUM_CLASSES)
    return k.d


# -- models/wrn.py: WideResNet(depth, num_classes, widen_factor) ----------------------------
def wrn(depth: int, widen: int) -> dict:
    k = Keys()
    ch = [16, 16 * widen, 32 * widen, 64 * widen]
    n = (depth - 4) // 6
    k.conv("conv1", 3, ch[0], 3)
    for b in range(1, 4):
        cin, cout = ch[b - 1], ch[b]
        for i in range(n):
            inp = cin if i == 0 else cout
            p = f"block{b}.layer.{i}"
            k.bn(f"{p}.bn1", inp)
            k.conv(f"{p}.conv1", inp, cout, 3)
            k.bn(f"{p}.bn2", cout)
            k.conv(f"{p}.conv2", cout, cout, 3)
            if inp != cout:  # convShortcut exists only when in != out (equalInOut False)
                k.conv(f"{p}.convShortcut", inp, cout, 1)
    k.bn("bn1", ch[3])
    k.linear("fc", ch[3], NUM_CLASSES)
    return k.d


# -- models/vgg.py: VGG(cfg, batch_norm=True) (model_dict's vgg8..vgg19 are the *_bn ones) --
VGG_CFG = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
    "S": [[64], [128], [256], [512], [512]],
}


def vgg(cfg: str) -> dict:
    k = Keys()
    cin = 3
    for b, block in enumerate(VGG_CFG[cfg]):
        idx = 0
        for v in block:  # conv (bias), BN, ReLU -> indices idx, idx+1, idx+2
            k.conv(f"block{b}.{idx}", cin, v, 3, bias=True)
            k.bn(f"block{b}.{idx + 1}", v)
            idx += 3
            cin = v
    k.linear("classifier", 512, NUM_CLASSES)
    return k.d


# -- models/mobilenetv2.py: mobile_half = MobileNetV2(T=6, width_mult=0.5) ------------------
def mobile_half() -> dict:
    k = Keys()
    T, w = 6, 0.5
    setting = [[1, 16, 1, 1], [T, 24, 2, 1], [T, 32, 3, 2], [T, 64, 4, 2], [T, 96, 3, 1], [T, 160, 3, 2],
               [T, 320, 1, 1]]
    inp = int(32 * w)
    k.conv("conv1.0", 3, inp, 3)
    k.bn("conv1.1", inp)
    for g, (t, c, n, _s) in enumerate(setting):
        oup = int(c * w)
        for i in range(n):
            p = f"blocks.{g}.{i}.conv"
            hid = inp * t
            k.conv(f"{p}.0", inp, hid, 1)
            k.bn(f"{p}.1", hid)
            k.conv(f"{p}.3", hid, hid, 3, groups=hid)
            k.bn(f"{p}.4", hid)
            k.conv(f"{p}.6", hid, oup, 1)
            k.bn(f"{p}.7", oup)
            inp = oup
    last = 1280  # int(1280 * w) only for w > 1
    k.conv("conv2.0", inp, last, 1)
    k.bn("conv2.1", last)
    k.linear("classifier.0", last, NUM_CLASSES)
    return k.d


# -- models/ShuffleNetv1.py: ShuffleV1 = ShuffleNet(out 240/480/960, blocks 4/8/4, groups 3) -
def shuffle_v1() -> dict:
    k = Keys()
    groups = 3
    k.conv("conv1", 3, 24, 1)
    k.bn("bn1", 24)
    in_planes = 24
    for li, (out_planes, n) in enumerate(zip((240, 480, 960), (4, 8, 4)), start=1):
        for i in range(n):
            out = out_planes - (in_planes if i == 0 else 0)
            mid = int(out / 4)
            g = 1 if in_planes == 24 else groups
            p = f"layer{li}.{i}"
            k.conv(f"{p}.conv1", in_planes, mid, 1, groups=g)
            k.bn(f"{p}.bn1", mid)
            k.conv(f"{p}.conv2", mid, mid, 3, groups=mid)
            k.bn(f"{p}.bn2", mid)
            k.conv(f"{p}.conv3", mid, out, 1, groups=groups)
            k.bn(f"{p}.bn3", out)
            in_planes = out_planes
    k.linear("linear", 960, NUM_CLASSES)
    return k.d


# -- models/ShuffleNetv2.py: ShuffleV2 = ShuffleNetV2(net_size=1) ---------------------------
def shuffle_v2() -> dict:
    k = Keys()
    out_channels, num_blocks = (116, 232, 464, 1024), (3, 7, 3)
    k.conv("conv1", 3, 24, 1)  # the reference's 3x3 stem is commented out: 1x1
    k.bn("bn1", 24)
    cin = 24
    for li, (cout, n) in enumerate(zip(out_channels[:3], num_blocks), start=1):
        mid = cout // 2
        p = f"layer{li}.0"  # DownBlock
        k.conv(f"{p}.conv1", cin, cin, 3, groups=cin)
        k.bn(f"{p}.bn1", cin)
        k.conv(f"{p}.conv2", cin, mid, 1)
        k.bn(f"{p}.bn2", mid)
        k.conv(f"{p}.conv3", cin, mid, 1)
        k.bn(f"{p}.bn3", mid)
        k.conv(f"{p}.conv4", mid, mid, 3, groups=mid)
        k.bn(f"{p}.bn4", mid)
        k.conv(f"{p}.conv5", mid, mid, 1)
        k.bn(f"{p}.bn5", mid)
        for i in range(1, n + 1):  # BasicBlock(cout), split ratio 0.5
            c = int(cout * 0.5)
            p = f"layer{li}.{i}"
            k.conv(f"{p}.conv1", c, c, 1)
            k.bn(f"{p}.bn1", c)
            k.conv(f"{p}.conv2", c, c, 3, groups=c)
            k.bn(f"{p}.bn2", c)
            k.conv(f"{p}.conv3", c, c, 1)
            k.bn(f"{p}.bn3", c)
        cin = cout
    k.conv("conv2", 464, 1024, 1)
    k.bn("bn2", 1024)
    k.linear("linear", 1024, NUM_CLASSES)
    return k.d


SMALL, X4 = [16, 16, 32, 64], [32, 64, 128, 256]

#: kdbench name -> (reference file: constructor, builder)
ARCHS = {
    **{f"resnet{d}": (f"models/resnet.py: resnet{d}", lambda d=d: cifar_resnet(d, SMALL))
       for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": ("models/resnet.py: resnet8x4", lambda: cifar_resnet(8, X4)),
    "resnet32x4": ("models/resnet.py: resnet32x4", lambda: cifar_resnet(32, X4)),
    "resnet18": ("models/resnetv2.py: ResNet18", lambda: resnet_v2(False, [2, 2, 2, 2])),
    "resnet34": ("models/resnetv2.py: ResNet34", lambda: resnet_v2(False, [3, 4, 6, 3])),
    "resnet50": ("models/resnetv2.py: ResNet50", lambda: resnet_v2(True, [3, 4, 6, 3])),
    "resnet101": ("models/resnetv2.py: ResNet101", lambda: resnet_v2(True, [3, 4, 23, 3])),
    "resnet152": ("models/resnetv2.py: ResNet152", lambda: resnet_v2(True, [3, 8, 36, 3])),
    "wrn_16_1": ("models/wrn.py: wrn_16_1", lambda: wrn(16, 1)),
    "wrn_16_2": ("models/wrn.py: wrn_16_2", lambda: wrn(16, 2)),
    "wrn_40_1": ("models/wrn.py: wrn_40_1", lambda: wrn(40, 1)),
    "wrn_40_2": ("models/wrn.py: wrn_40_2", lambda: wrn(40, 2)),
    "vgg8": ("models/vgg.py: vgg8_bn", lambda: vgg("S")),
    "vgg11": ("models/vgg.py: vgg11_bn", lambda: vgg("A")),
    "vgg13": ("models/vgg.py: vgg13_bn", lambda: vgg("B")),
    "vgg16": ("models/vgg.py: vgg16_bn", lambda: vgg("D")),
    "vgg19": ("models/vgg.py: vgg19_bn", lambda: vgg("E")),
    "mobilenetv2": ("models/mobilenetv2.py: mobile_half", mobile_half),
    "shufflev1": ("models/ShuffleNetv1.py: ShuffleV1", shuffle_v1),
    "shufflev2": ("models/ShuffleNetv2.py: ShuffleV2", shuffle_v2),
}


def main() -> None:
    data = {
        "about": "state_dict() key -> shape of RepDistiller's CIFAR models (HobbitLong/RepDistiller models/, "
                 "commit eedab9d / b13aecc) at num_classes=100; written by tests/data/make_repdistiller_fixture.py",
        "num_classes": NUM_CLASSES,
        "architectures": {name: {"reference": ref, "state_dict": build()} for name, (ref, build) in ARCHS.items()},
    }
    text = json.dumps(data, indent=1)
    text = re.sub(r"\[[\d,\s]*\]", lambda m: "".join(m.group(0).split()), text)  # one line per shape
    OUT.write_text(text + "\n")
    log.info("wrote %s (%d architectures)", OUT, len(ARCHS))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
