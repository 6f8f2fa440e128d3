"""The ceiling for the HTTP benchmark: a handler that answers every request with a constant.

It runs under exactly the server settings of digits (workers, batch size, delay), so the
gap between it and digits is what our own code costs, whatever the machine's speed or noise.
"""
from ts.torch_handler.base_handler import BaseHandler

ANSWER = '{"digit":0}'


class NoopHandler(BaseHandler):
    """Loads nothing, reads nothing, answers a constant JSON string per request."""

    def initialize(self, context):
        self.context = context
        self.initialized = True

    def handle(self, data, context):
        return [ANSWER] * len(data)
