"""A plugin module that raises while it is imported (tests/test_faults.py)."""

raise ImportError("this plugin needs a library that is not installed")
