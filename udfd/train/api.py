"""What a trainer plugin provides, and what it is given: the ``udfd.trainers`` contract.

A trainer is an entry point in group ``udfd.trainers`` naming a class; udfd
instantiates it with no arguments. It adds its own options to its
``udfd train NAME`` parser, and fits a :class:`Dataset` into a :class:`Trained`.
udfd does the rest: reading the data, writing the model file atomically with
its sha256, and printing the config and TICKscript that serve it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from udfd.history.rows import FieldValue
from udfd.train.progress import Progress

GROUP = "udfd.trainers"


@dataclass
class Dataset:
    """The rows that had every feature (and the label), as floats in feature order."""

    features: list[str]
    rows: list[list[float]]
    measurement: str = ""
    label: str | None = None
    labels: list[FieldValue] = field(default_factory=list)
    #: points read, and why those not in ``rows`` were left out
    read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class Trained:
    """A fitted model, serialized, and what to tell the user about it."""

    data: bytes
    #: the model file's format, as its suffix: ".onnx" or ".joblib"
    suffix: str
    #: options the serving handler needs besides model, sha256 and field
    options: Mapping[str, Any] = field(default_factory=dict)
    #: (what, value) lines of the summary, in order
    summary: Sequence[tuple[str, str]] = ()
    #: TICKscript lines that follow the handler's call in the example
    tick_after: Sequence[str] = ()


class Trainer(Protocol):
    #: the handler (entry point name in ``udfd.handlers``) that serves the models
    handler: str
    #: one line for ``udfd train --help``
    summary: str
    #: whether ``--label`` is required
    needs_label: bool

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def train(self, data: Dataset, args: argparse.Namespace, progress: Progress) -> Trained: ...


@dataclass(frozen=True)
class InstalledTrainer:
    name: str
    value: str
    distribution: str

    def load(self) -> Trainer:
        ep = importlib.metadata.EntryPoint(self.name, self.value, GROUP)
        trainer: Trainer = ep.load()()
        return trainer


def installed_trainers() -> list[InstalledTrainer]:
    found = []
    for ep in importlib.metadata.entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        found.append(InstalledTrainer(ep.name, ep.value, dist))
    return sorted(found, key=lambda t: t.name)
