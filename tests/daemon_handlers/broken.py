"""A plugin whose dependency is missing: importing it fails."""

import udfd_missing_dependency  # noqa: F401
