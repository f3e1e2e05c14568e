"""``python -m udfd``: the same as the ``udfd`` command."""

from .cli import main

main()
