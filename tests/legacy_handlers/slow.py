"""A legacy-style UDF whose point() is slow: it blocks until the test opens GATE.

STARTED tells the test that point() is running; `delay` (seconds, option)
adds a plain sleep after the gate, like real CPU-heavy work.
"""

import threading
import time

from kapacitor.udf import udf_pb2
from kapacitor.udf.agent import Agent, Handler

STARTED = threading.Event()
GATE = threading.Event()


class SlowHandler(Handler):
    def __init__(self, agent):
        self._agent = agent
        self._delay = 0.0

    def info(self):
        response = udf_pb2.Response()
        response.info.wants = udf_pb2.STREAM
        response.info.provides = udf_pb2.STREAM
        response.info.options["delay"].valueTypes.append(udf_pb2.DOUBLE)
        return response

    def init(self, init_req):
        for opt in init_req.options:
            if opt.name == "delay":
                self._delay = opt.values[0].doubleValue
        response = udf_pb2.Response()
        response.init.success = True
        return response

    def point(self, point):
        STARTED.set()
        GATE.wait(10)
        time.sleep(self._delay)
        response = udf_pb2.Response()
        response.point.CopyFrom(point)
        self._agent.write_response(response)


if __name__ == "__main__":
    agent = Agent()
    agent.handler = SlowHandler(agent)
    agent.start()
    agent.wait()
