"""Legacy handlers that lean on details of the official agent's write_response.

``ReusingHandler`` keeps one Response and changes it after each write (the
official agent serialized it at once, so that was safe). ``GreetingHandler``
writes a point from init(), which must reach Kapacitor after the InitResponse.
"""

from kapacitor.udf import udf_pb2
from kapacitor.udf.agent import Handler


class ReusingHandler(Handler):
    def __init__(self, agent):
        self._agent = agent
        self._response = udf_pb2.Response()

    def info(self):
        response = udf_pb2.Response()
        response.info.wants = udf_pb2.STREAM
        response.info.provides = udf_pb2.STREAM
        return response

    def init(self, init_req):
        response = udf_pb2.Response()
        response.init.success = True
        return response

    def point(self, point):
        out = self._response
        out.point.CopyFrom(point)
        out.point.fieldsDouble["copy"] = 1.0
        self._agent.write_response(out)
        out.point.fieldsDouble["copy"] = 2.0  # a second copy, from the same message
        self._agent.write_response(out)
        out.point.name = "changed after the write"


class GreetingHandler(ReusingHandler):
    def init(self, init_req):
        hello = udf_pb2.Response()
        hello.point.name = "hello"
        hello.point.fieldsString["from"] = "init"
        self._agent.write_response(hello)
        return super().init(init_req)

    def point(self, point):
        response = udf_pb2.Response()
        response.point.CopyFrom(point)
        self._agent.write_response(response)
