"""Example boefjes shipped inside the package, in OpenKAT's plugin layout.

They live in the package (not only in the repository's ``examples/`` folder) so that
``python -m boefje_runtime.demo`` works from a plain ``pip install``: the demo discovers them here
with :meth:`~boefje_runtime.plugins.BoefjeRegistry.discover`, exactly as a boefje image discovers
its own plugin folder. Runtime code never imports this package.
"""

from __future__ import annotations

from pathlib import Path

#: The plugin folder: one sub-folder per boefje, each with ``boefje.json`` and ``main.py``.
BOEFJES_DIR = Path(__file__).resolve().parent / "boefjes"

__all__ = ["BOEFJES_DIR"]
