"""``udfd run``: a handler on line protocol, as Kapacitor would feed it, without Kapacitor.

The pieces are kept apart so the pytest plugin (:mod:`udfd.pytest_plugin`) uses
the same ones: option typing as a TICKscript types literals (:mod:`.options`),
points and batches cut from line protocol (:mod:`.feed`), output written as line
protocol, JSON or a table (:mod:`.output`), and the command (:mod:`.command`),
which drives the real engine over a real socket, or a running daemon's socket.
"""
