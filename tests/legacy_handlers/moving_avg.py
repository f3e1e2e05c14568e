"""A legacy-style UDF: moving average of a field over the last `size` points of each group.

Options: field (string), size (int), as (string). The windows survive restarts
through a JSON snapshot.
"""

import json
import logging
from collections import deque

from kapacitor.udf import udf_pb2
from kapacitor.udf.agent import Agent, Handler


class AvgHandler(Handler):
    def __init__(self, agent):
        self._agent = agent
        self._field = ""
        self._as = "avg"
        self._size = 0
        self._windows = {}

    def info(self):
        response = udf_pb2.Response()
        response.info.wants = udf_pb2.STREAM
        response.info.provides = udf_pb2.STREAM
        response.info.options["field"].valueTypes.append(udf_pb2.STRING)
        response.info.options["size"].valueTypes.append(udf_pb2.INT)
        response.info.options["as"].valueTypes.append(udf_pb2.STRING)
        return response

    def init(self, init_req):
        for opt in init_req.options:
            value = opt.values[0]
            if opt.name == "field":
                self._field = value.stringValue
            elif opt.name == "size":
                self._size = value.intValue
            elif opt.name == "as":
                self._as = value.stringValue
        problems = []
        if not self._field:
            problems.append("field is required")
        if self._size < 1:
            problems.append("size must be at least 1")
        response = udf_pb2.Response()
        response.init.success = not problems
        response.init.error = "; ".join(problems)
        return response

    def snapshot(self):
        data = {group: list(window) for group, window in self._windows.items()}
        response = udf_pb2.Response()
        response.snapshot.snapshot = json.dumps(data).encode()
        return response

    def restore(self, restore_req):
        response = udf_pb2.Response()
        try:
            data = json.loads(restore_req.snapshot)
            for group, values in data.items():
                self._windows[group] = deque(values, maxlen=self._size)
            response.restore.success = True
        except ValueError as exc:
            response.restore.success = False
            response.restore.error = f"unreadable snapshot: {exc}"
        return response

    def begin_batch(self, begin_req):
        raise Exception("not supported")

    def point(self, point):
        window = self._windows.get(point.group)
        if window is None:
            window = self._windows[point.group] = deque(maxlen=self._size)
        window.append(point.fieldsDouble[self._field])
        # start from a copy of the input so name, tags and group carry over,
        # then keep only the average as a field
        response = udf_pb2.Response()
        response.point.CopyFrom(point)
        response.point.ClearField("fieldsDouble")
        response.point.ClearField("fieldsInt")
        response.point.ClearField("fieldsString")
        response.point.ClearField("fieldsBool")
        response.point.fieldsDouble[self._as] = sum(window) / len(window)
        self._agent.write_response(response)

    def end_batch(self, end_req):
        raise Exception("not supported")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    agent = Agent()
    agent.handler = AvgHandler(agent)
    agent.start()
    agent.wait()
