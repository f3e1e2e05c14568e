"""A legacy-style UDF (official agent API): sends every point back unchanged."""

import sys

from kapacitor.udf import udf_pb2
from kapacitor.udf.agent import Agent, Handler


class MirrorHandler(Handler):
    def __init__(self, agent):
        self._agent = agent

    def info(self):
        response = udf_pb2.Response()
        response.info.wants = udf_pb2.STREAM
        response.info.provides = udf_pb2.STREAM
        return response

    def init(self, init_req):
        response = udf_pb2.Response()
        response.init.success = True
        return response

    def snapshot(self):
        response = udf_pb2.Response()
        response.snapshot.snapshot = b""
        return response

    def restore(self, restore_req):
        response = udf_pb2.Response()
        response.restore.success = True
        return response

    def begin_batch(self, begin_req):
        raise Exception("not supported")

    def point(self, point):
        response = udf_pb2.Response()
        response.point.CopyFrom(point)
        self._agent.write_response(response, True)

    def end_batch(self, end_req):
        raise Exception("not supported")


if __name__ == "__main__":
    agent = Agent(sys.stdin, sys.stdout)
    handler = MirrorHandler(agent)
    agent.handler = handler
    agent.start()
    agent.wait()
