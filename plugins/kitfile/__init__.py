"""The ``kitfile`` frontend: KitOps' Kitfile (YAML) → the build description a Modelfile gives.

A file named ``Kitfile``, ``kitfile`` or ``.kitfile`` (the names ``kit pack`` looks for), or
``NAME.Kitfile``, is read by this frontend without a ``# syntax=`` line
(``filenames`` below); ``# syntax=kitfile`` selects it for any name. Everything after the
description (planning, caching, layers, pushing) is the same as for a Modelfile.

Where each Kitfile field goes (docs/modelfile.md §10 has the table with examples):

* ``package.name`` (else ``model.name``) → ``descriptor.name``, and the default tag as
  ``NAME`` gives it; ``package.version`` (else ``model.version``) → ``descriptor.version``;
  ``package.description`` (else ``model.description``) → ``descriptor.description``;
  ``package.authors`` → ``descriptor.authors``; ``package.license``, ``model.license`` and
  each part's ``license`` → ``descriptor.licenses`` (each once, in that order);
  ``model.format`` → ``config.format``;
* every section, whole, as JSON with sorted keys → the manifest annotation
  ``dev.modelbuild.kitfile.<section>`` (``package``, ``model`` with its ``parts`` and
  ``parameters``, ``code``, ``datasets``, ``docs``, ``prompts``), and ``manifestVersion`` →
  ``dev.modelbuild.kitfile.manifestVersion``: what has no ModelPack field (``framework``,
  part ``type``, per-entry ``description``, ``license`` and ``name``, ``parameters``) is
  carried there;
* paths → layers: ``model.path`` and parts → MODEL (a file ending ``.json``, ``.yaml``,
  ``.xml`` or ``.txt`` → CONFIG, as KitOps' generator calls them metadata), ``code`` →
  CODE, ``datasets`` → DATASET, ``docs`` and ``prompts`` → DOC; a directory is one tar
  layer, split into its whole pieces when ``.kitignore`` or a nested entry leaves part of
  it out (``_files``).

The YAML is read with bounds and located errors (``_yaml``), against KitOps' schema
(``_schema``); ``.kitignore`` follows KitOps' (Docker's) rules (``_ignore``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from modelbuild.api import hookimpl

if TYPE_CHECKING:
    from modelbuild.api import BuildDescription, SourceRegistry


class KitfileFrontend:
    """``# syntax=kitfile``, or a build file named as ``kit pack`` names one."""

    name = "kitfile"
    # the names kit pack finds (KitOps' constants.DefaultKitfileNames), and NAME.Kitfile
    filenames = ("Kitfile", "kitfile", ".kitfile", "*.Kitfile", "*.kitfile")

    def load(self, text: str, *, filename: str, base_dir: Path, default_context: Path,
             build_args: Mapping[str, str], sources: "SourceRegistry") -> "BuildDescription":
        from ._describe import describe  # PyYAML and the rest only when a Kitfile is built

        return describe(text, filename=filename, base_dir=base_dir, context=default_context, build_args=build_args)


@hookimpl
def modelbuild_register_frontends(registry: Any) -> None:
    registry.add(KitfileFrontend())


__all__ = ["KitfileFrontend"]
