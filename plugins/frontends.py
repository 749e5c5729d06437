"""The built-in ``modelfile`` frontend (modctl-compatible Modelfiles, with extensions)."""

from modelbuild.frontend.modelfile import ModelfileFrontend
from modelbuild.hookspecs import hookimpl


@hookimpl
def modelbuild_register_frontends(registry):  # noqa: ANN001, ANN201 - pluggy hook
    registry.add(ModelfileFrontend())
