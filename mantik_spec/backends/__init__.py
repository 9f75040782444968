"""Compute backends: one module per ``type:``, all behind the protocol in :mod:`.base`.

A new backend is a pydantic config in :mod:`mantik_spec.spec.model`, a module with a
class implementing :class:`.base.Backend`, and one line in :data:`BACKENDS` (see
CONTRIBUTING.md). This is the only module that knows backend types by name: everything
else asks the protocol (a test holds it so). Backend modules are imported only when a project uses their type,
so ``mantik validate`` and ``--help`` never import pyunicore.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, cast

from .base import Backend, BackendClass

if TYPE_CHECKING:
    from ..spec.model import BackendConfig

# type: in mantik.yaml -> the module (in this package) and the class implementing it
BACKENDS: dict[str, tuple[str, str]] = {
    "local": ("local", "LocalBackend"),
    "slurm": ("slurm", "SlurmBackend"),
    "unicore": ("unicore", "UnicoreBackend"),
    "firecrest": ("firecrest", "FirecrestBackend"),
}

if TYPE_CHECKING:  # the type check proves every registered class implements the protocol (never run)
    from .firecrest import FirecrestBackend
    from .local import LocalBackend
    from .slurm import SlurmBackend
    from .unicore import UnicoreBackend

    CHECKED: dict[str, BackendClass] = {
        "local": LocalBackend,
        "slurm": SlurmBackend,
        "unicore": UnicoreBackend,
        "firecrest": FirecrestBackend,
    }


def backend_class(backend_type: str) -> BackendClass:
    """The class implementing ``type: backend_type``; ValueError for a type no backend implements."""
    if backend_type not in BACKENDS:  # the spec model rejects it first
        raise ValueError(f"backend type {backend_type!r} is not implemented")
    module, name = BACKENDS[backend_type]
    return cast(BackendClass, getattr(import_module(f".{module}", __name__), name))


def make_backend(name: str, config: BackendConfig, state_root: Path) -> Backend:
    """The backend named ``name`` in mantik.yaml, built from its config (chosen by its ``type:``)."""
    return backend_class(config.type)(name, config, state_root)
