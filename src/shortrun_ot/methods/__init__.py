"""The systems this workflow trains and compares, one module each.

A method module defines ``METHOD``, a subclass of :class:`~shortrun_ot.methods.base.Method`,
and has its settings schema beside it (``<module>.schema.yaml``). A run names its method by the
module's name (``method: vae``) or, for a method of your own package, by its dotted module path.
Nothing else in the workflow knows the methods (docs, "Adding a method").
"""

from __future__ import annotations

import pkgutil
from pathlib import Path


def available() -> list[str]:
    """Names of the methods shipped with this package (its modules that have a schema file)."""
    here = Path(__file__).parent
    return sorted(info.name for info in pkgutil.iter_modules([str(here)])
                  if (here / f"{info.name}.schema.yaml").is_file())
