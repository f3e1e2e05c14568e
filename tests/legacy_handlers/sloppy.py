"""Legacy-style UDFs with the mistakes that the official agent (or Python 2) let through.

udfd tolerates each of them with a warning in the log.
"""

import json

from kapacitor.udf import udf_pb2
from kapacitor.udf.agent import Agent, Handler


class CountHandler(Handler):
    """Counts points per group. Sloppy: info() sets no edges, init() and restore()
    return nothing, and the snapshot is set from a str (a TypeError on Python 3)."""

    def __init__(self, agent):
        self._agent = agent
        self._counts = {}

    def info(self):
        response = udf_pb2.Response()
        response.info.options["as"].valueTypes.append(udf_pb2.STRING)
        return response

    def init(self, init_req):
        pass

    def snapshot(self):
        response = udf_pb2.Response()
        response.snapshot.snapshot = json.dumps(self._counts)
        return response

    def restore(self, restore_req):
        self._counts = json.loads(restore_req.snapshot)

    def point(self, point):
        self._counts[point.group] = self._counts.get(point.group, 0) + 1
        response = udf_pb2.Response()
        response.point.CopyFrom(point)
        response.point.fieldsInt["count"] = self._counts[point.group]
        self._agent.write_response(response)


class StrSnapshotHandler(CountHandler):
    """snapshot() returns the JSON text itself instead of a Response."""

    def snapshot(self):
        return json.dumps(self._counts)


class KwSnapshotHandler(CountHandler):
    """Builds the snapshot response with keyword arguments and a str."""

    def snapshot(self):
        return udf_pb2.Response(
            snapshot=udf_pb2.SnapshotResponse(snapshot=json.dumps(self._counts))
        )


class NoInfoHandler(Handler):
    """info() forgets to return anything; no snapshot()/restore() at all."""

    def __init__(self, agent):
        self._agent = agent

    def info(self):
        response = udf_pb2.Response()
        response.info.wants = udf_pb2.STREAM

    def init(self, init_req):
        return udf_pb2.InitResponse(success=True)

    def point(self, point):
        response = udf_pb2.Response()
        response.point.CopyFrom(point)
        self._agent.write_response(response)


class ChattyHandler(NoInfoHandler):
    """Writes management responses nobody asked for and returns its Response from point()."""

    def point(self, point):
        stray = udf_pb2.Response()
        stray.snapshot.snapshot = b"stray"
        self._agent.write_response(stray)
        stray = udf_pb2.Response()
        stray.init.success = False
        self._agent.write_response(stray)
        response = udf_pb2.Response()
        response.point.CopyFrom(point)
        self._agent.write_response(response)
        return response

    def snapshot(self):
        response = udf_pb2.Response()
        response.snapshot.snapshot = b"real"
        return response


class RefuserHandler(NoInfoHandler):
    """Refuses Init unless option `ok` is given, and refuses every Restore."""

    def info(self):
        response = udf_pb2.Response()
        response.info.options["ok"].valueTypes.extend([])
        return response

    def init(self, init_req):
        response = udf_pb2.Response()
        response.init.success = any(o.name == "ok" for o in init_req.options)
        response.init.error = "" if response.init.success else "option ok is required"
        return response

    def snapshot(self):
        response = udf_pb2.Response()
        response.snapshot.snapshot = b"state"
        return response

    def restore(self, restore_req):
        response = udf_pb2.Response()
        response.restore.success = False
        response.restore.error = "cannot restore " + restore_req.snapshot.decode()
        return response


if __name__ == "__main__":
    agent = Agent()
    agent.handler = CountHandler(agent)
    agent.start()
    agent.wait()
