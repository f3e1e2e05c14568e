"""udfd-ml: first-party analytics handlers (normalize; model-based scoring to come)."""
