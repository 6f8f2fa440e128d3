"""The real-TorchServe fixtures (``server``, ``client``, ``model_store``) and helpers live in
tests/conftest.py, shared with tests/reliability; re-exported here for older imports."""
from tests.conftest import Client, free_ports, start_server, stop_server  # noqa: F401
