"""The built-in ``local`` executor: work items on worker processes of this machine.

The executor is implemented in the core (``modelbuild.executors``); this plugin registers it
through the same hook the ``ray`` executor and third-party executors use.
"""

from typing import Any

from modelbuild.api import hookimpl, local_executor


@hookimpl
def modelbuild_register_executors(registry: Any) -> None:
    registry.add(local_executor())
