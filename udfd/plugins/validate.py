"""Check a config without serving it: load every function's handler, check its defaults.

``udfd kapacitor-conf`` and ``udfd check`` read the config but load no handler, so a
typo in a handler reference, an option key or an option value used to surface only
when the daemon served it (as a failed Init, task by task). ``validate`` does what
the daemon's workers do at load time, in this process and without binding a socket,
and reports every function at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from udfd.config import Config, Function, resolve_functions
from udfd.plugins.loader import Failed, discover, load_function

__all__ = ["FunctionReport", "validate_functions"]


@dataclass
class FunctionReport:
    """One configured function as the daemon would load it."""

    function: Function
    error: str | None = None
    origin: str = ""
    wants: str = ""
    provides: str = ""
    #: option -> its TICKscript signature, e.g. ".size(int)"
    options: dict[str, str] = field(default_factory=dict)
    #: options every TICKscript must give (no default in the handler or the config)
    required: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        fn = self.function
        return {
            "name": fn.name,
            "handler": fn.handler,
            "origin": self.origin or fn.origin,
            "socket": str(fn.socket),
            "pool": fn.pool,
            "defaults": dict(fn.options),
            "ok": self.ok,
            "error": self.error,
            "wants": self.wants,
            "provides": self.provides,
            "options": self.options,
            "required": self.required,
        }


def validate_functions(config: Config) -> list[FunctionReport]:
    """Load each function's handler as a worker would; never raises for a broken plugin."""
    autoload = not config.disable_plugin_autoload
    installed = discover(autoload=autoload)
    reports = []
    for fn in resolve_functions(config, installed):
        result = load_function(
            fn,
            installed=installed,
            autoload=autoload,
            allow_distributions=config.allow_distributions,
        )
        report = FunctionReport(fn)
        if isinstance(result, Failed):
            report.error = result.error
        else:
            spec = result.spec
            report.origin = result.origin
            report.wants = spec.wants.name.lower()
            report.provides = spec.provides.name.lower()
            report.options = {name: o.signature() for name, o in sorted(spec.options.items())}
            given = set(fn.options)
            report.required = sorted(
                name
                for name, o in spec.options.items()
                if o.required and name not in given and o.field not in given
            )
        reports.append(report)
    return reports
