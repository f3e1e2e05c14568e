"""A legacy-style batch UDF: echoes each batch, keeping the points whose `field` >= `min`."""

from kapacitor.udf import udf_pb2
from kapacitor.udf.agent import Agent, Handler


class SelectHandler(Handler):
    def __init__(self, agent):
        self._agent = agent
        self._field = "value"
        self._min = 0.0
        self._begin = None
        self._points = []

    def info(self):
        response = udf_pb2.Response()
        response.info.wants = udf_pb2.BATCH
        response.info.provides = udf_pb2.BATCH
        response.info.options["field"].valueTypes.append(udf_pb2.STRING)
        response.info.options["min"].valueTypes.append(udf_pb2.DOUBLE)
        return response

    def init(self, init_req):
        for opt in init_req.options:
            if opt.name == "field":
                self._field = opt.values[0].stringValue
            elif opt.name == "min":
                self._min = opt.values[0].doubleValue
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
        self._begin = begin_req
        self._points = []

    def point(self, point):
        if point.fieldsDouble[self._field] >= self._min:
            self._points.append(point)

    def end_batch(self, end_req):
        response = udf_pb2.Response()
        response.begin.CopyFrom(self._begin)
        response.begin.size = len(self._points)
        self._agent.write_response(response)
        for p in self._points:
            response = udf_pb2.Response()
            response.point.CopyFrom(p)
            self._agent.write_response(response)
        response = udf_pb2.Response()
        response.end.CopyFrom(end_req)
        self._agent.write_response(response, flush=True)


if __name__ == "__main__":
    agent = Agent()
    agent.handler = SelectHandler(agent)
    agent.start()
    agent.wait()
