"""mlx-lm's model files without mlx-lm's `__init__`.

`import mlx_lm.models.gemma3_text` runs `mlx_lm/__init__.py` first, which imports mlx-lm's
generate, convert and tokenizer code and with them transformers: 2.4 s on the 2-core test
machine, against 0.06 s for the model files we use (the startup budget is 5 s). So the
package registers `mlx_lm` as a package whose `__init__` runs only when something asks it
for an attribute (`mlx_lm.load`, `from mlx_lm import generate`): submodules import as usual,
and code that uses the package's own names still gets them, from the real `__init__`. (One
difference: once the submodule `mlx_lm.generate` or `mlx_lm.convert` is imported, that name on
the package is the submodule, not the function the real `__init__` would have put there.)
"""

from __future__ import annotations

import importlib.util
import sys


def defer_mlx_lm_init() -> None:
    """Register `mlx_lm` with its `__init__` deferred (nothing if it is imported already
    or not installed)."""
    if "mlx_lm" in sys.modules:
        return
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return
    package = importlib.util.module_from_spec(spec)
    ran = []

    def __getattr__(name: str):
        if ran:
            raise AttributeError(f"module 'mlx_lm' has no attribute {name!r}")
        ran.append(True)
        spec.loader.exec_module(package)  # the real __init__, into this same module
        return getattr(package, name)

    package.__getattr__ = __getattr__
    sys.modules["mlx_lm"] = package
