"""``python -m udfd``: the same as the ``udfd`` command."""

from udfd.cli import main

main()
