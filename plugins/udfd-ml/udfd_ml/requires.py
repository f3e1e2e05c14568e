"""The optional dependencies of the model handlers, imported in one place.

udfd and ``normalize`` must work without scikit-learn, so the model handlers'
modules import their heavy dependencies through :func:`require`. When one is
missing the import fails with a sentence saying what to install, and that
sentence is what ``udfd list``, the status file and Kapacitor's Init error show
for the unavailable handler, instead of a bare ``No module named 'sklearn'``.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

#: udfd imports its functions' handlers concurrently, in threads; two threads that
#: import scikit-learn at once can meet its internal import cycles half-way and get
#: a partially initialised module. One heavy import at a time avoids that.
_IMPORT_LOCK = threading.RLock()

#: what ``pip install 'udfd-ml[models]'`` brings, by import name
MODELS_EXTRA = {
    "numpy": "numpy",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "sklearn": "scikit-learn",
    "skl2onnx": "skl2onnx",
}


def require(module: str, what: str = "udfd-ml's model handlers") -> ModuleType:
    """Import ``module`` or fail with an ImportError that says how to get it."""
    try:
        with _IMPORT_LOCK:
            return importlib.import_module(module)
    except ImportError as exc:
        top = module.partition(".")[0]
        package = MODELS_EXTRA.get(top, top)
        raise ImportError(
            f"{what} need {package}, which is not installed "
            f"({type(exc).__name__}: {exc}); install it with: pip install 'udfd-ml[models]'"
        ) from exc
