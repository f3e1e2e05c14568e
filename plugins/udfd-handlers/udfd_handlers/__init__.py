"""First-party udfd handlers, registered through the ``udfd.handlers`` entry points.

Each handler lives in its own module and is imported only when udfd loads it, so
nothing here imports a handler module.
"""

__version__ = "0.1.0"
