"""modelbuild: a BuildKit-style build system for CNCF ModelPack model artifacts.

Importing this package has no side effects and imports nothing heavy; the public API lives
in its modules (``modelbuild.build.build``, ``modelbuild.hookspecs``, ``modelbuild.tarball``,
``modelbuild.testing``).
"""

__version__ = "0.1.0"
