"""Compute backends: one module per ``type:``, all behind the protocol in :mod:`.base`.

A new backend is a module with a class implementing :class:`.base.Backend`, a
pydantic config in :mod:`mantik_spec.spec.model`, and one line in :func:`make_backend`.
"""

from __future__ import annotations

from pathlib import Path


def make_backend(name: str, config, state_root: Path):
    if config.type == "local":
        from .local import LocalBackend

        return LocalBackend(name, config, state_root)
    if config.type == "slurm":
        from .slurm import SlurmBackend

        return SlurmBackend(name, config, state_root)
    if config.type == "unicore":
        from .unicore import UnicoreBackend

        return UnicoreBackend(name, config, state_root)
    raise ValueError(f"backend type {config.type!r} is not implemented")  # the spec model rejects it first
