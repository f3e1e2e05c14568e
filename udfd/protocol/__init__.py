"""The wire: Kapacitor's UDF protocol as bytes and messages.

Framing and the request/response codecs are pure (bytes in, messages out) and
own no sockets; ``client`` is Kapacitor's side of a connection, for probes and
tests. Nothing here knows about handlers, connections or processes.
"""
