"""The built-in ``modelfile`` frontend (modctl-compatible Modelfiles, with extensions).

The Modelfile language is implemented in the core package (its parser, spans and limits are
the core's); this plugin registers it through the same hook a third-party frontend uses.
"""

from typing import Any

from modelbuild.api import hookimpl, modelfile_frontend


@hookimpl
def modelbuild_register_frontends(registry: Any) -> None:
    registry.add(modelfile_frontend())
