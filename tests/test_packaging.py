"""The distribution ships every package: an editable install hides a missing one."""

from __future__ import annotations

import tomllib

from support import REPO


def test_every_package_directory_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for top, name in (("modelbuild", "modelbuild"), ("plugins", "modelbuild_plugins")):
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / top)
            found.add(".".join([name, *rel.parts]))
    assert found == listed
