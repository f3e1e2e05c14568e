"""A legacy-style UDF that writes points from a thread of its own, as fast as it can
(a generator UDF): with a peer that stops reading, its write_response must block."""

import sys
import threading

from kapacitor.udf import udf_pb2
from kapacitor.udf.agent import Agent, Handler


class FirehoseHandler(Handler):
    def __init__(self, agent):
        self._agent = agent
        self.written = 0

    def info(self):
        response = udf_pb2.Response()
        response.info.wants = udf_pb2.STREAM
        response.info.provides = udf_pb2.STREAM
        return response

    def init(self, init_req):
        threading.Thread(target=self._pour, daemon=True).start()
        response = udf_pb2.Response()
        response.init.success = True
        return response

    def _pour(self):
        while True:
            response = udf_pb2.Response()
            response.point.name = "generated"
            response.point.time = self.written
            response.point.fieldsDouble["value"] = 1.0
            response.point.tags["host"] = "h" * 40
            self._agent.write_response(response, True)
            self.written += 1

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
        pass

    def end_batch(self, end_req):
        raise Exception("not supported")


if __name__ == "__main__":
    agent = Agent(sys.stdin, sys.stdout)
    agent.handler = FirehoseHandler(agent)
    agent.start()
