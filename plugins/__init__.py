"""modelbuild's built-in plugins, installed as ``modelbuild_plugins``.

They register through the ``modelbuild`` entry-point group (see pyproject.toml), exactly as
a third-party plugin does, and import only modelbuild's public API.
"""
