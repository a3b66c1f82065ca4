"""kdbench.students: the model zoo (students and teachers alike).

Every public module registers its architectures in :data:`kdbench.registry.MODELS` when
imported (the registry imports them all on first use); each model exposes
``forward_taps(x, preact=False) -> kdbench.taps.Outputs``. ``timm:<name>`` and
``tv:<name>`` reach timm and torchvision through the adapters of :mod:`.external`.
"""
