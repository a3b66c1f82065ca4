"""Model construction: ``create_model(name, num_classes, in_chans, image_size)``.

Architectures are registered in :data:`kdbench.registry.MODELS` by the modules of
``kdbench.students`` (and by plugins); ``timm:<name>`` and ``tv:<name>`` reach timm and
torchvision through tap adapters. Registration metadata: ``family`` (e.g. ``"resnet"``),
``lightweight`` (MobileNetV2/ShuffleNet: trained with the recipe's lower lr) and
``version`` (default 1; bumped when a model's parameter names or computation change, so
that results and cached teachers of the old model are never silently reused: see
:func:`model_version`).
"""
from __future__ import annotations

from torch import nn

from kdbench.registry import MODELS


def create_model(name: str, num_classes: int, in_chans: int = 3, image_size: int = 32) -> nn.Module:
    """Build the registered architecture ``name``; it exposes ``forward_taps``."""
    factory = MODELS.get(name)
    model = factory(num_classes=num_classes, in_chans=in_chans, image_size=image_size)
    if not hasattr(model, "forward_taps"):
        raise TypeError(f"model {name!r} ({type(model).__name__}) has no forward_taps(x, preact=False) -> Outputs")
    model.arch_name = name
    return model


def is_lightweight(name: str) -> bool:
    """Whether ``name`` is trained with the recipe's ``lr_lightweight`` (RepDistiller: 0.01
    for MobileNetV2 and ShuffleNet students)."""
    if name in MODELS:
        return bool(MODELS.meta(name).get("lightweight", False))
    return False


def model_version(name: str) -> int:
    """The version of architecture ``name``: its registered ``version`` metadata, 1 when it
    has none (``timm:``/``tv:`` names and plugins that do not declare one)."""
    version = MODELS.meta(name).get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"model {name!r} is registered with version={version!r}; a version is an integer >= 1")
    return version


def classifier_parameters(model: nn.Module) -> set[int]:
    """ids of the final classifier's parameters (``get_classifier()``, timm's convention)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    return {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()


def feature_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All parameters except the classifier's (AB's initialisation trains these)."""
    head = classifier_parameters(model)
    return [p for p in model.parameters() if id(p) not in head]
