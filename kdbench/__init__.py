"""kdbench: a benchmark suite for knowledge-distillation methods.

Public entry points: :func:`kdbench.models.create_model`, the registries in
:mod:`kdbench.registry`, the :class:`kdbench.method.Method` interface, and the CLI
(``kdbench run|list|status|report``).
"""
__version__ = "0.1.0"
