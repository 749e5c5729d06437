"""A build description checked against the installed plugins: the last stage of the frontend.

Whatever frontend produced the description (the Modelfile, a Kitfile, a third party's), the
same checks run here, before anything is planned or run, and every problem is a
``Modelfile:L:C`` error at the line that asked for it:

* each ``CONVERT``/``QUANTIZE``/``SHARD`` finds the plugin that will do it for the format
  the weights have at that point (a converter, a quantizer, a shard strategy);
* each ``TARGET`` stage finds its target plugin, which accepts its variant, its constraints
  and every step of the stage, and can run the format the stage ends with; a stage that
  names no steps gets its target's defaults;
* ``--platform`` selects stages;
* each variant's ``RUNTIME`` engines are installed, take the parameters given, and can serve
  what the stage builds (:func:`modelbuild.frontend.runtime.resolve_runtime`);
* no file the context's ignore rules exclude is packaged, whether or not the frontend
  applied them (:func:`modelbuild.ignore.apply_to_description`);
* every path any frontend names is one an artifact may hold, relative to the context (not
  absolute, no ``..``, no control character, not a reserved name: :func:`check_paths`), so
  a third-party frontend cannot package ``../secret``. A symbolic link the user put in the
  context is followed, as docs/modelfile.md says (a Hugging Face cache snapshot is one).

The result, :class:`~modelbuild.description.ResolvedBuild`, is what the planner plans.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from modelbuild.description import (
    BuildDescription,
    FileKind,
    FileSpec,
    ResolvedBuild,
    StageSpec,
    Transform,
    TransformSpec,
    Variant,
)
from modelbuild.errors import ModelfileError, UsageError

if TYPE_CHECKING:
    from modelbuild.plugins import PluginHost
    from modelbuild.targets import Stage


def resolve(desc: BuildDescription, host: "PluginHost", *, platforms: Sequence[str] = ()) -> ResolvedBuild:
    """Check *desc* against *host*'s plugins; *platforms* is ``--platform`` (stage or target names)."""
    from modelbuild.ignore import apply_to_description

    check_paths(desc)
    desc = apply_to_description(desc)
    files = model_set(desc)
    shared, fmt = resolve_transforms(desc.transforms, desc, host, None)
    variants = resolve_variants(desc, host, fmt, platforms, shared=shared)
    return ResolvedBuild(desc, tuple(files), tuple(shared), tuple(variants))


def check_paths(desc: BuildDescription) -> None:
    """Every FileSpec path is a valid artifact path relative to the context, or a located
    error at the line that named it; whether it exists is the frontend's to report, and the
    build's when it reads it."""
    from modelbuild.artifact_paths import path_problem

    for spec in desc.files:
        problem = path_problem(spec.path)
        if problem is not None:
            raise ModelfileError(f"{spec.path!r} {problem}", spec.origin,
                                 hint="name a file inside the build context")


def model_set(desc: BuildDescription) -> list[FileSpec]:
    """The files weight transforms and the metadata reader work on: every MODEL and CONFIG
    file (not directories). Weight files of no known format ride along: an ONNX model's
    external data file is one, and a transform passes what it does not know through."""
    return [f for f in desc.files if not f.is_dir and f.kind in (FileKind.CONFIG, FileKind.MODEL)]


def platform_identity(spec: StageSpec, target: Any) -> str:
    """What a stage's steps are keyed by: its target, variant and constraints, not its name
    (renaming ``AS gpu`` to ``AS cuda`` changes no output but the index entry's annotation)."""
    variant = spec.variant or (target.variants[0] if target.variants else "")
    return " ".join([f"{spec.target}/{variant}", *sorted(str(c) for c in spec.constraints)])


def resolve_variants(desc: BuildDescription, host: "PluginHost", fmt: str | None,
                     platforms: Sequence[str] = (), *, shared: Sequence[Transform] = ()) -> list[Variant]:
    """The variants to build, generic (CPU) ones first, each with its checked chain and
    runtime; *shared* is the chain before the first TARGET, which *fmt* comes out of."""
    from modelbuild.frontend.runtime import resolve_runtime

    if not desc.stages:
        if platforms:
            raise UsageError(f"--platform {','.join(platforms)}: {desc.source_file} has no TARGET stage to select",
                             hint="drop --platform, or add TARGET stages: docs/modelfile.md")
        return [Variant(None, None, runtime=resolve_runtime(desc, None, host, fmt=fmt, chain=shared))]
    from modelbuild.targets import ANN_ACCELERATOR, ANN_STAGE, ConstraintError, Stage

    variants = []
    for spec in desc.stages:
        if platforms and spec.name not in platforms and spec.target not in platforms:
            continue
        try:
            target = host.targets.get(spec.target)
        except UsageError:
            raise ModelfileError(f"unknown target {spec.target}",
                                 spec.origin, hint=f"installed: {', '.join(host.targets.names())}") from None
        if spec.variant and spec.variant not in target.variants:
            raise ModelfileError(f"target {spec.target} has no variant {spec.variant}", spec.origin,
                                 hint=f"variants: {', '.join(target.variants)}")
        stage = Stage(spec.name, spec.target, spec.variant, tuple(spec.constraints))
        for c in stage.constraints:
            try:
                target.check_constraint(c)
            except ConstraintError as exc:
                raise ModelfileError(str(exc), spec.origin) from None
        transforms = spec.transforms
        if not transforms and fmt is not None:
            transforms = tuple(TransformSpec(action, arg, tuple(sorted(opts.items())), spec.origin,
                                             max_bytes=_default_size(action, arg))
                               for action, arg, opts in target.default_steps(fmt))
        chain, final = resolve_transforms(transforms, desc, host, fmt)
        _check_stage(spec, stage, target, chain, fmt, final)
        annotations = {**target.annotations(stage), ANN_STAGE: spec.name}
        runtime = resolve_runtime(desc, spec, host, fmt=final, chain=[*shared, *chain],
                                  accelerator=annotations.get(ANN_ACCELERATOR, ""))
        variants.append((not target.generic, Variant(
            spec.name, platform_identity(spec, target), tuple(chain),
            dict(target.platform(stage)), dict(sorted(annotations.items())), runtime)))
    if not variants:
        names = ", ".join(s.name for s in desc.stages)
        raise UsageError(f"--platform {','.join(platforms)} selects no stage", hint=f"stages: {names}")
    return [v for _, v in sorted(variants, key=lambda pair: pair[0])]


def _default_size(action: str, arg: str) -> int | None:
    if action != "shard":
        return None
    from modelbuild.weights import parse_size

    return parse_size(arg)


def _check_stage(spec: StageSpec, stage: "Stage", target: Any, chain: list[Transform], fmt: str | None,
                 final: str | None) -> None:
    """Every step makes sense for the stage's target, which can run what the stage ends with."""
    step_fmt = fmt
    for t in chain:
        problem = target.check_step(stage, t.action, t.arg, step_fmt)
        if problem:
            directive = {"convert": "CONVERT", "quantize": "QUANTIZE"}.get(t.action, "SHARD")
            raise ModelfileError(f"{directive} {t.arg} makes no sense for TARGET {spec.target}: {problem}", t.origin)
        if t.action == "convert":
            step_fmt = t.arg
    if final is not None and final not in target.formats:
        raise ModelfileError(
            f"TARGET {spec.target} cannot run {final} weights (its engines take {', '.join(target.formats)})",
            (chain[-1].origin if chain else spec.origin),
        )


def resolve_transforms(transforms: Sequence[TransformSpec], desc: BuildDescription, host: "PluginHost",
                       fmt: str | None) -> tuple[list[Transform], str | None]:
    """Each transform with the plugin that will do it, and the format after them; a
    ModelfileError at the directive's line when none can. *fmt* is the format before them
    (None: read it from the MODEL files' extensions)."""
    if fmt is None:
        fmt = _weights_format(transforms, desc, host)
        if fmt is None:
            return [], None
    chain = []
    for t in transforms:
        if t.action == "convert":
            converter = host.converter_for(fmt, t.arg)
            if converter is None:
                pairs = ", ".join(f"{c.source_format} → {c.target_format}" for c in host.converters) or "none"
                raise _at(t, f"cannot convert {fmt} weights to {t.arg}", hint=f"installed converters: {pairs}")
            chain.append(_chosen(t, converter, host.converters.owner(converter.name)))
            fmt = converter.target_format
        elif t.action == "quantize":
            quantizer = host.quantizer_for(fmt, t.arg)
            if quantizer is None:
                if t.arg in host.quant_types():
                    others = sorted({q.format for q in host.quantizers if t.arg in q.types})
                    raise _at(t, f"quant type {t.arg} cannot be applied to {fmt} weights (it is for {', '.join(others)})",
                              hint=f"{fmt} takes: {', '.join(host.quant_types(fmt)) or 'none'}")
                raise _at(t, f"unknown quant type {t.arg}", hint=f"known: {', '.join(host.quant_types())}")
            chain.append(_chosen(t, quantizer, host.quantizers.owner(quantizer.name)))
        else:
            if fmt not in host.shard_strategies:
                raise _at(t, f"no shard strategy for {fmt} weights",
                          hint=f"installed: {', '.join(host.shard_strategies.names()) or 'none'}")
            chain.append(_chosen(t, host.shard_strategies.get(fmt), host.shard_strategies.owner(fmt)))
    return chain, fmt


def _weights_format(transforms: Sequence[TransformSpec], desc: BuildDescription, host: "PluginHost") -> str | None:
    """The one format of the MODEL files (by extension), or None when there are no weights of
    a known format and no transforms asks for them."""
    dirs = [f.path for f in desc.files if f.kind == FileKind.MODEL and f.is_dir]
    formats = sorted({name for f in model_set(desc) if f.kind == FileKind.MODEL
                      and (name := host.format_name_for_path(f.path)) is not None})
    if len(formats) > 1 and transforms:
        raise _at(transforms[0], f"{transforms[0].directive} needs weights of one format, "
                                 f"found {' and '.join(formats)}")
    if formats:
        return formats[0]
    if transforms:
        first = transforms[0]
        known = ", ".join(ext for h in host.formats for ext in h.extensions)
        hint = (f"weights inside a directory ({dirs[0]}) cannot be transformed; select the files" if dirs
                else f"MODEL must select weight files of a known format ({known})")
        raise _at(first, f"{first.directive} has no weights to work on", hint=hint)
    return None


def _chosen(t: TransformSpec, plugin: Any, owner: str) -> Transform:
    """*t* done by *plugin*, its options checked against the plugin's declarations."""
    from modelbuild.frontend.options import typed_options

    return Transform(t.action, t.arg, plugin.name, owner, typed_options(t, plugin), t.max_bytes, t.origin)


def _at(t: TransformSpec | Transform, message: str, hint: str | None = None) -> ModelfileError:
    return ModelfileError(message, t.origin, hint=hint)
