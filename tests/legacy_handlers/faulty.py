"""A legacy-style UDF that fails on demand, chosen by the point's `action` tag.

- "raise": point() raises ValueError.
- "report": writes the point, then an ErrorResponse.
- "later": a background thread writes the point once RELEASE is set.
- "fail-later": a background thread writes an ErrorResponse once RELEASE is set.
- "bare": writes the point itself instead of a Response.
- anything else: mirrors the point.
"""

import threading

from kapacitor.udf import udf_pb2
from kapacitor.udf.agent import Agent, Handler

RELEASE = threading.Event()


class FaultyHandler(Handler):
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

    def _mirror(self, point):
        response = udf_pb2.Response()
        response.point.CopyFrom(point)
        self._agent.write_response(response)

    def _later(self, point):
        RELEASE.wait(10)
        self._mirror(point)

    def _fail_later(self, point):
        RELEASE.wait(10)
        response = udf_pb2.Response()
        response.error.error = "gave up on " + point.name
        self._agent.write_response(response)

    def point(self, point):
        action = point.tags.get("action", "")
        if action == "raise":
            raise ValueError("cannot handle " + point.name)
        if action == "report":
            self._mirror(point)
            response = udf_pb2.Response()
            response.error.error = "bad point " + point.name
            self._agent.write_response(response)
            return
        if action == "later":
            threading.Thread(target=self._later, args=(point,), daemon=True).start()
            return
        if action == "fail-later":
            threading.Thread(target=self._fail_later, args=(point,), daemon=True).start()
            return
        if action == "bare":
            self._agent.write_response(point)
            return
        self._mirror(point)


if __name__ == "__main__":
    agent = Agent()
    agent.handler = FaultyHandler(agent)
    agent.start()
    agent.wait()
