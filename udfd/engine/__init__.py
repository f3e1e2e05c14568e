"""One connection: reader, handler runner, writer, output validation, counters.

The engine serves one accepted socket for one function. It knows the wire
(``udfd.protocol``) and the handler API, but nothing about processes, config
files or how handlers were found.
"""
