"""udfd's side of Kapacitor's HTTP API: re-enabling the tasks a restart stopped.

Kapacitor never reconnects a UDF. When udfd (or one of its workers) goes away,
every task with a connection to it stops with an error and stays stopped. udfd
therefore remembers which tasks it served (:mod:`udfd.kapacitor.book`, a file in
the state directory) and, once its sockets serve again, asks Kapacitor to start
them (:mod:`udfd.kapacitor.reenable`, over :mod:`udfd.kapacitor.api`).

Kept apart from the process model: the supervisor feeds the book and starts the
re-enabler, but neither knows about workers or sockets.
"""
