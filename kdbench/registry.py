"""Name -> object registries with lazy discovery of built-ins and plugins.

One small class serves every registry (methods, models, datasets, runners):

* ``@REG.register("name")`` registers a class or factory; a duplicate name raises.
* ``REG.get(name)`` returns it; an unknown name raises :class:`UnknownNameError`
  listing close matches (difflib) and everything that exists.
* ``REG.list(pattern="*")`` lists names matching an fnmatch pattern (like timm's
  ``list_models``).
* Built-in modules (the ``kdbench.methods`` package, ...) and third-party plugins
  (``importlib.metadata`` entry points in the group named after the registry, e.g.
  ``kdbench.methods``) are imported lazily on first use, once. A plugin that fails to
  import is logged and recorded in :attr:`Registry.failed_plugins`; it never breaks the
  suite.
* Prefix resolvers handle open-ended families such as ``timm:<name>``; a resolver
  receives the text after the prefix. Suffix resolvers build compositions such as
  ``at+kd`` (:mod:`kdbench.compose`); a resolver receives the text before the suffix and
  raises ``KeyError``/``ValueError`` (with the reason) for a name it cannot build.
  Compositions are not in :meth:`Registry.list`; :meth:`Registry.composed` lists them.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.metadata
import logging
import pkgutil
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists suggestions."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry:
    """A named collection of objects, filled by decorators, built-ins and plugins."""

    def __init__(self, kind: str, builtin_packages: tuple[str, ...] = (), entry_point_group: str | None = None):
        self.kind = kind
        self._builtin_packages = builtin_packages
        self._group = entry_point_group
        self._items: dict[str, Any] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._prefixes: dict[str, Callable[[str], Any]] = {}
        self._suffixes: dict[str, Callable[[str], Any]] = {}
        self._loaded = False
        self._loading = False
        self.failed_plugins: dict[str, str] = {}

    # -- registration -------------------------------------------------------------------
    def register(self, name: str, **meta: Any) -> Callable[[Any], Any]:
        """Decorator registering ``obj`` under ``name`` (lowercase); extra keywords are metadata."""
        if not name or name != name.lower():
            raise ValueError(f"{self.kind} names must be non-empty lowercase, got {name!r}")

        def deco(obj: Any) -> Any:
            self.add(name, obj, **meta)
            return obj

        return deco

    def add(self, name: str, obj: Any, **meta: Any) -> None:
        if name in self._items:
            existing = self._items[name]
            raise ValueError(
                f"duplicate {self.kind} name {name!r}: already registered by "
                f"{getattr(existing, '__module__', '?')}.{getattr(existing, '__qualname__', existing)}"
            )
        self._items[name] = obj
        self._meta[name] = dict(meta)

    def register_prefix(self, prefix: str, resolver: Callable[[str], Any]) -> None:
        """Names ``prefix:<rest>`` resolve through ``resolver(rest)`` (e.g. ``timm:``)."""
        self._prefixes[prefix] = resolver

    def register_suffix(self, suffix: str, resolver: Callable[[str], Any]) -> None:
        """Names ``<name><suffix>`` resolve through ``resolver(name)`` (e.g. ``+kd``)."""
        self._suffixes[suffix] = resolver

    def _composition(self, name: str) -> tuple[Callable[[str], Any], str] | None:
        for suffix, resolver in self._suffixes.items():
            if name.endswith(suffix) and len(name) > len(suffix):
                return resolver, name[: -len(suffix)]
        return None

    def composed(self, pattern: str = "*") -> list[str]:
        """The compositions that can be built from registered names (each suffix after each
        name), matching ``pattern``."""
        found = []
        for name in (n + suffix for suffix in self._suffixes for n in self.list()):
            if fnmatch.fnmatchcase(name, pattern):
                try:
                    if name in self:
                        found.append(name)
                except Exception as exc:  # a plugin whose class cannot be composed is left out
                    log.debug("%s %r cannot be composed: %s", self.kind, name, exc)
        return found

    # -- discovery ----------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            for package in self._builtin_packages:
                import_submodules(package)
            if self._group:
                self._load_entry_points()
        finally:
            self._loading = False
            self._loaded = True

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=self._group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the suite
                self.failed_plugins[ep.name] = f"{type(exc).__name__}: {exc}"
                log.warning("skipping %s plugin %r (%s): %s", self.kind, ep.name, ep.value, exc)
                continue
            # An entry point may name a module (whose import registers) or an object.
            if not isinstance(obj, type(importlib)) and ep.name not in self._items:
                try:
                    self.add(ep.name, obj)
                except ValueError as exc:
                    self.failed_plugins[ep.name] = str(exc)
                    log.warning("skipping %s plugin %r: %s", self.kind, ep.name, exc)

    # -- lookup -------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        self._ensure_loaded()
        if name in self._items:
            return self._items[name]
        prefix, sep, rest = name.partition(":")
        if sep and prefix in self._prefixes:
            return self._prefixes[prefix](rest)
        composition = self._composition(name)
        if composition:
            resolver, base = composition
            return resolver(base)
        raise UnknownNameError(self.unknown_message(name))

    def meta(self, name: str) -> dict[str, Any]:
        self._ensure_loaded()
        return self._meta.get(name, {})

    def unknown_message(self, name: str) -> str:
        """Why ``name`` cannot be had: a plugin of that name that failed to load says so
        (with its import error); otherwise close matches and everything available."""
        names = self.list()
        if name in self.failed_plugins:
            return f"{self.kind} {name!r} could not be loaded: {self.failed_plugins[name]}"
        composition = self._composition(name)
        if composition:
            try:
                composition[0](composition[1])
            except (KeyError, ValueError) as exc:
                return str(exc) if isinstance(exc, ValueError) else str(exc.args[0])
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        extra = "".join(f", {p}:<name>" for p in sorted(self._prefixes))
        return f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(names)}{extra}."

    def list(self, pattern: str = "*") -> list[str]:
        self._ensure_loaded()
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        if not isinstance(name, str):
            return False
        prefix, sep, _ = name.partition(":")
        if name in self._items or bool(sep and prefix in self._prefixes):
            return True
        composition = self._composition(name)
        if composition:
            try:
                composition[0](composition[1])
            except (KeyError, ValueError):
                return False
            return True
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self.list())


def import_submodules(package: str) -> None:
    """Import every module of ``package`` (not starting with ``_``) so decorators run."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def import_user_modules(modules: list[str] | tuple[str, ...]) -> None:
    """Import unpackaged research code named by ``--import`` (its decorators register).

    Raises :class:`ImportError` saying whether the module itself was not found or was
    found but failed while importing (a dependency it imports is missing, an error in it).
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
                raise ImportError(
                    f"--import {module!r} failed: no module {exc.name!r} on the current directory or PYTHONPATH "
                    f"(e.g. 'mypkg.my_method' for mypkg/my_method.py, with PYTHONPATH=.)") from exc
            raise ImportError(f"importing {module!r} failed: {exc}") from exc
        except Exception as exc:  # the module was found; its own code raised
            raise ImportError(f"importing {module!r} failed: {type(exc).__name__}: {exc}") from exc


METHODS = Registry("method", ("kdbench.methods",), "kdbench.methods")
MODELS = Registry("model", ("kdbench.students",), "kdbench.models")
DATASETS = Registry("dataset", ("kdbench.datasets",), "kdbench.datasets")
RUNNERS = Registry("runner", ("kdbench.runners",), None)

register_method = METHODS.register


def _plus_kd(base: str) -> Any:
    """``<base>+kd``: the method combined with KD (built lazily by :mod:`kdbench.compose`)."""
    from kdbench.compose import plus_kd

    return plus_kd(base)


METHODS.register_suffix("+kd", _plus_kd)
register_model = MODELS.register
register_dataset = DATASETS.register
register_runner = RUNNERS.register
