"""The process model: supervisor, pools of worker processes, sockets, status, systemd.

Everything that owns a process, a listening socket or a file on disk lives
here. It drives the engine (one ``Connection`` per accepted socket, inside a
worker) and asks ``udfd.plugins`` for handlers.
"""
