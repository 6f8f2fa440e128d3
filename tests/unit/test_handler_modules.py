"""TorchServe loads a handler module's one class as the handler: a module defining a second
class (a dataclass for its items) leaves every worker dead at start."""
from __future__ import annotations

import importlib

import pytest
from ts.utils.util import list_classes_from_module


@pytest.mark.parametrize("name", ["handler.digits_handler", "handler.numbers_handler"])
def test_each_handler_module_defines_exactly_one_class(name):
    assert [c.__name__ for c in list_classes_from_module(importlib.import_module(name))] == [
        {"handler.digits_handler": "DigitsHandler", "handler.numbers_handler": "NumbersHandler"}[name]]
