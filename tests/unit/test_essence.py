"""kopf's per-event essence is skipped (controller/essence.py): only safe while no handler compares essences."""

from __future__ import annotations

from typing import Any

import kopf
import pytest
from kopf._cogs.structs import bodies

from phalanx.controller import essence, handlers
from phalanx.controller.operator import Operator


def test_the_operator_registers_no_handler_that_needs_the_essence() -> None:
    registry = handlers.build_registry(Operator())  # build_registry runs check_unused itself
    assert registry._watching.get_all_handlers()  # the on.event handlers are there
    assert not registry._changing.get_all_handlers()
    assert not registry._spawning.get_all_handlers()


def test_a_change_detecting_handler_is_refused() -> None:
    registry = kopf.OperatorRegistry()

    @kopf.on.update("pods", registry=registry, id="would_never_fire")
    def on_update(**_: Any) -> None: ...

    with pytest.raises(RuntimeError, match="would_never_fire"):
        essence.check_unused(registry)


def test_the_essence_is_empty_and_kopfs_settings_use_it() -> None:
    body = bodies.Body({"metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"x": [1, 2]}, "status": {}})
    assert essence.EmptyEssence(prefix="kopf.phalanx.dev").build(body=body) == {}
    settings = kopf.OperatorSettings()
    handlers.configure(settings)
    assert isinstance(settings.persistence.diffbase_storage, essence.EmptyEssence)
