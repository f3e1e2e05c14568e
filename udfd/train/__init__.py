"""``udfd train``: fit a model from history and print how to serve it.

The command line, the data sources and the files written live here, in udfd;
the fitting itself is a plugin (entry point group ``udfd.trainers``), so udfd
needs no scikit-learn, and ``udfd-ml`` brings ``isolation_forest`` and
``classifier``.
"""
