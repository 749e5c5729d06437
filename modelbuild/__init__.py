"""modelbuild: a BuildKit-style build system for CNCF ModelPack model artifacts.

Importing this package has no side effects and imports nothing heavy. Plugins import
:mod:`modelbuild.api` and nothing else; the hooks are documented in
:mod:`modelbuild.hookspecs`; ``modelbuild.build.build`` runs a build and
:mod:`modelbuild.testing` helps test a plugin.

``__version__`` is also the plugin API's version: its major and minor are what the
hookspecs' ``Since:`` tags refer to.
"""

__version__ = "1.5.0"
