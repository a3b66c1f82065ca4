"""Tap adapters for timm and torchvision models: ``timm:<name>`` and ``tv:<name>``.

Registers two prefix resolvers on :data:`kdbench.registry.MODELS`; ``resolver(rest)``
checks the name (an unknown one raises :class:`~kdbench.registry.UnknownNameError` with
close matches from ``timm.list_models()`` / ``torchvision.models.list_models()``) and
returns a factory ``factory(num_classes=..., in_chans=..., image_size=...)``. No
pretrained weights are loaded (``pretrained=False`` / ``weights=None``).

Two adapters give every such model :meth:`forward_taps` (``supports_preact = False``: the
library models expose no pre-activation maps):

* :class:`TimmTapAdapter` (timm models): one pass of timm's ``forward_intermediates``
  gives the intermediate maps and the final features, ``forward_head(final,
  pre_logits=True)`` the embedding and ``get_classifier()`` the logits from it, so the
  logits are those of the model's own ``forward``. ``features_only=True`` is never used
  (it drops the head).
* :class:`HookTapAdapter` (every torchvision model, and timm models whose
  ``forward_intermediates`` is unavailable): forward hooks. At construction a dry run
  (eval mode, no grad, batch 2 at ``image_size``) hooks the *candidate* modules -- the
  children of the model, descending through plain ``nn.Sequential`` / ``nn.ModuleList`` /
  ``nn.ModuleDict`` containers (their subclasses, such as torchvision's
  ``Conv2dNormActivation``, count as leaves), pooling/dropout/identity/flatten layers
  excluded -- and records their 4-D outputs in call order. For every distinct spatial
  size the module producing the *last* output at that size is selected (for a sequential
  CNN: the end of each resolution level, e.g. torchvision ResNet's stem ReLU and
  ``layer1..4``). Only the selected modules (plus a forward pre-hook on the final
  ``nn.Linear``, the last ``Linear`` called, whose input is the embedding) keep a hook;
  the hooks store references only while :meth:`forward_taps` runs, so plain
  :meth:`forward` costs one Python call per hook and keeps nothing alive.

For both adapters the maps, in order, are split into ``stem`` and ``stages``: the first
map is the stem when its side is at least half the input's (reduction <= 2), larger than
the next map's, and at least two maps follow; otherwise ``stem`` is ``None`` and every map
is a stage. This matches the usual convention (ResNet/EfficientNet/MobileNet: stem at
stride 2, four stages at strides 4-32; ConvNeXt: no stem, four stages; ViT: one map per
block at the patch resolution).

Limitations: the hook selection is made once at ``image_size`` (a different input size
with a different resolution pattern keeps the same modules); a selected output that the
model later modifies in place (e.g. torchvision DenseNet's final in-place ReLU after
``norm5``) is seen modified; torchvision models get ``in_chans`` by replacing their
first ``nn.Conv2d`` with a freshly initialised one of the same configuration, and are
built at their default size arguments (``image_size`` is not passed to torchvision).
"""
from __future__ import annotations

import difflib
import logging
from typing import Any, Callable

import torch
from torch import Tensor, nn

from kdbench.registry import MODELS, UnknownNameError
from kdbench.taps import Outputs

log = logging.getLogger(__name__)

__all__ = ["TimmTapAdapter", "HookTapAdapter", "split_stem", "resolve_timm", "resolve_tv"]

Factory = Callable[..., nn.Module]

_NON_TAP_TYPES: tuple[type[nn.Module], ...] = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.Flatten,
)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_EMBEDDING = "embedding"  # capture key of the classifier's input


def split_stem(maps: list[Tensor], input_hw: int) -> tuple[Tensor | None, tuple[Tensor, ...]]:
    """Split intermediate maps into ``(stem, stages)`` (rule in the module docstring)."""
    if len(maps) >= 3:
        h0, h1 = maps[0].shape[-2], maps[1].shape[-2]
        if h0 > h1 and 2 * h0 >= input_hw:
            return maps[0], tuple(maps[1:])
    return None, tuple(maps)


def _first_logits(out: Any) -> Tensor:
    """The main logits of a model output (torchvision GoogLeNet/Inception return tuples)."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"cannot find logits in a model output of type {type(out).__name__}")


class TimmTapAdapter(nn.Module):
    """Taps of a timm model through ``forward_intermediates`` + ``forward_head``."""

    supports_preact = False
    tap_kind = "cnn"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def forward_taps(self, x: Tensor, preact: bool = False) -> Outputs:
        final, maps = self.model.forward_intermediates(x)
        pre_logits = self.model.forward_head(final, pre_logits=True)
        logits = self.model.get_classifier()(pre_logits)
        if logits.dim() > 2:  # e.g. a 1x1-conv classifier
            logits = torch.flatten(logits, 1)
        stem, stages = split_stem([m for m in maps if m.dim() == 4], x.shape[-2])
        return Outputs(logits=logits, embedding=torch.flatten(pre_logits, 1), stages=stages, stem=stem)

    def get_classifier(self) -> nn.Module:
        return self.model.get_classifier()


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Children of ``model``, descending through plain containers (see module docstring)."""
    found: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if type(child) in _CONTAINERS:
                walk(full + ".", child)
            elif not isinstance(child, _NON_TAP_TYPES):
                found.append((full, child))

    walk("", model)
    return found


class HookTapAdapter(nn.Module):
    """Taps of an arbitrary CNN through a few forward hooks (selected by a dry run)."""

    supports_preact = False
    tap_kind = "cnn"

    def __init__(self, model: nn.Module, in_chans: int, image_size: int, head: nn.Module | None = None):
        super().__init__()
        self.model = model
        self._capture: dict[Any, Tensor] | None = None
        tap_names, last_linear = self._dry_run(in_chans, image_size)
        head = head if isinstance(head, nn.Linear) else last_linear
        if head is None:
            raise TypeError(
                f"{type(model).__name__}: no nn.Linear is called in the forward pass, so the "
                "embedding (the final Linear's input) is undefined; this model is not supported"
            )
        # Plain lists: the modules are already registered under ``model``. Hooks are bound
        # methods keyed by module objects, so deepcopy/pickle of the adapter stay consistent.
        self._head = [head]
        self._tap_names = tap_names
        modules = dict(model.named_modules())
        self._tap_modules = [modules[n] for n in tap_names]
        for module in self._tap_modules:
            module.register_forward_hook(self._store_output)
        head.register_forward_pre_hook(self._store_embedding)
        if not tap_names:
            log.warning("%s: no 4-D intermediate outputs found; stages will be empty", type(model).__name__)

    # -- selection ------------------------------------------------------------------------
    @torch.no_grad()
    def _dry_run(self, in_chans: int, image_size: int) -> tuple[list[str], nn.Linear | None]:
        calls: list[tuple[str, tuple[int, int]]] = []
        linears: list[nn.Linear] = []
        handles = []
        for name, module in _candidates(self.model):

            def rec(mod: nn.Module, inp: Any, out: Any, name: str = name) -> None:
                if isinstance(out, Tensor) and out.dim() == 4:
                    calls.append((name, (out.shape[-2], out.shape[-1])))

            handles.append(module.register_forward_hook(rec))
        for module in self.model.modules():
            if isinstance(module, nn.Linear):
                handles.append(module.register_forward_pre_hook(lambda mod, inp: linears.append(mod)))
        was_training = self.model.training
        self.model.eval()
        try:
            p = next(self.model.parameters(), None)
            device = p.device if p is not None else "cpu"
            self.model(torch.zeros(2, in_chans, image_size, image_size, device=device))
        finally:
            self.model.train(was_training)
            for h in handles:
                h.remove()
        last_at: dict[tuple[int, int], str] = {}
        for name, size in calls:  # insertion order = first appearance of each size
            last_at[size] = name
        names = list(dict.fromkeys(last_at.values()))
        return names, (linears[-1] if linears else None)

    # -- hooks ----------------------------------------------------------------------------
    def _store_output(self, mod: nn.Module, inp: Any, out: Any) -> None:
        if self._capture is not None:
            self._capture[mod] = out

    def _store_embedding(self, mod: nn.Module, inp: tuple[Tensor, ...]) -> None:
        if self._capture is not None:
            self._capture[_EMBEDDING] = inp[0]

    # -- interface ------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return _first_logits(self.model(x))

    def forward_taps(self, x: Tensor, preact: bool = False) -> Outputs:
        self._capture = capture = {}
        try:
            logits = _first_logits(self.model(x))
        finally:
            self._capture = None
        maps = [t for t in (capture.get(m) for m in self._tap_modules) if isinstance(t, Tensor) and t.dim() == 4]
        stem, stages = split_stem(maps, x.shape[-2])
        emb = capture.get(_EMBEDDING)
        if emb is None:
            raise RuntimeError(f"{type(self.model).__name__}: the classifier was not called in forward")
        return Outputs(logits=logits, embedding=torch.flatten(emb, 1), stages=stages, stem=stem)

    def get_classifier(self) -> nn.Linear:
        return self._head[0]

    @property
    def tap_modules(self) -> list[str]:
        """Names of the hooked modules whose outputs are the maps (stem first)."""
        return list(self._tap_names)


# -- timm ---------------------------------------------------------------------------------
def _unknown(kind: str, name: str, names: list[str]) -> UnknownNameError:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(f'{kind}:{c}') for c in close)}?" if close else ""
    return UnknownNameError(f"unknown {kind} model {name!r}.{hint} ({len(names)} {kind} models exist.)")


def _build_timm(name: str, num_classes: int, in_chans: int, image_size: int, use_hooks: bool = False) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = dict(pretrained=False, num_classes=num_classes, in_chans=in_chans)
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # names without a registered config
        cfg = None
    if cfg is not None and getattr(cfg, "fixed_input_size", False):
        kwargs["img_size"] = image_size  # ViT-like models need their input size at build
    model = timm.create_model(name, **kwargs)
    if not use_hooks and callable(getattr(model, "forward_intermediates", None)):
        adapter = TimmTapAdapter(model)
        was_training = model.training
        model.eval()
        try:  # a dry run: some models declare forward_intermediates without implementing it
            with torch.no_grad():
                adapter.forward_taps(torch.zeros(2, in_chans, image_size, image_size))
            return adapter
        except NotImplementedError as exc:
            log.info("timm:%s has no usable forward_intermediates (%s); using forward hooks", name, exc)
        finally:
            model.train(was_training)
    return HookTapAdapter(model, in_chans, image_size, head=model.get_classifier())


def resolve_timm(rest: str) -> Factory:
    """``timm:<name>`` -> factory building the timm model wrapped in a tap adapter."""
    import timm

    if not timm.is_model(rest):
        raise _unknown("timm", rest, timm.list_models())

    def factory(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> nn.Module:
        return _build_timm(rest, num_classes, in_chans, image_size)

    factory.__name__ = f"timm_{rest}"
    return factory


# -- torchvision --------------------------------------------------------------------------
def _replace_first_conv(model: nn.Module, in_chans: int) -> None:
    """Give ``model`` ``in_chans`` input channels by rebuilding its first ``nn.Conv2d``."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_chans:
                return
            new = nn.Conv2d(
                in_chans,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                1,
                module.bias is not None,
                module.padding_mode,
            )
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return
    raise TypeError(f"{type(model).__name__} has no nn.Conv2d to adapt to in_chans={in_chans}")


def _tv_names() -> list[str]:
    import torchvision.models as tvm

    return tvm.list_models(module=tvm)  # classification models only


def resolve_tv(rest: str) -> Factory:
    """``tv:<name>`` -> factory building the torchvision classifier with forward hooks."""
    names = _tv_names()
    if rest not in names:
        raise _unknown("tv", rest, names)

    def factory(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> nn.Module:
        import torchvision.models as tvm

        model = tvm.get_model(rest, weights=None, num_classes=num_classes)
        if in_chans != 3:
            _replace_first_conv(model, in_chans)
        return HookTapAdapter(model, in_chans, image_size)

    factory.__name__ = f"tv_{rest}"
    return factory


MODELS.register_prefix("timm", resolve_timm)
MODELS.register_prefix("tv", resolve_tv)
