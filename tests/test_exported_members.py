"""Each package's public surface is deliberate: __all__ lists what exists, and only that."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("name", ["mindloop.graph", "mindloop.trainer", "mindloop.agents", "mindloop.agents.chat",
                                  "mindloop.agents.signal", "mindloop.agents.cycle", "mindloop.agents.ui"])
def test_all_is_exact(name):
    module = importlib.import_module(name)
    assert sorted(module.__all__) == module.__all__, "keep __all__ sorted"
    for member in module.__all__:
        assert hasattr(module, member), f"{name}.__all__ names missing {member}"
    public = {n for n, v in vars(module).items() if not n.startswith("_") and not isinstance(v, type(module))}
    assert public == set(module.__all__), f"{name} exposes names not in __all__: {public - set(module.__all__)}"
