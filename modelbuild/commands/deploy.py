"""``modelbuild deploy``: Kubernetes manifests that serve a variant (docs/spec/runtime.md).

The reference is resolved as ``run`` resolves it (a registry reference the store lacks is
pulled first), but the variant is chosen for a cluster, not for this machine; an engine is
chosen that serves it (installed here or not: the cluster runs its image); and
:mod:`modelbuild.runtime.kube` writes a Deployment and Service (the model an OCI image
volume, or a ModelPack CSI volume) or a KServe InferenceService. Nothing is applied.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelbuild.api import Engine, EngineModel
    from modelbuild.runtime.kube import MemoryNeed
    from modelbuild.runtime.resolve import Variant
    from modelbuild.targets import Choice

HELP = """\
examples:
  modelbuild deploy registry.example.com/team/qwen2:0.5b > qwen2.yaml    Deployment + Service
  modelbuild deploy registry.example.com/team/qwen2:0.5b --csi -o qwen2.yaml   ModelPack CSI volume
  modelbuild deploy registry.example.com/team/llama:8b --kserve --platform cuda   KServe InferenceService
  modelbuild deploy registry.example.com/team/llama:8b --engine vllm --replicas 2 --namespace models
  modelbuild deploy qwen2:0.5b --reference registry.example.com/team/qwen2   a local tag, pushed there
  kubectl apply -f qwen2.yaml

Which variant (for the cluster, never for this machine): the one --platform names; the only one
of a single-platform artifact; else, with --engine, the first whose target the engine runs and
whose format it loads, GPU targets (cuda, rocm) before generic ones (cpu); else --platform is
required. The pod pulls the variant by its manifest digest (REPOSITORY@sha256:...), so neither
a moved tag nor the kubelet's own platform choice can change what it serves.

The engine: --engine; else the artifact's runtime description's; else the first engine plugin
that serves the variant (`modelbuild plugins` lists them). With --kserve and no --engine, a
Hugging Face checkpoint (safetensors and config.json) for cpu or cuda is served by KServe's own
huggingface runtime, mounted at /mnt/models (--param, --port and --context, which only an engine
takes, are refused then); other variants, and any with --engine, run the engine's container.

Memory: weights + KV cache at the served context (`modelbuild inspect` shows the estimate),
x1.25, + 1 GiB for the engine process, + 1 GiB when it needs /dev/shm, rounded up to 256 MiB:
the request and the limit. A GPU variant asks for one GPU; a cuda variant's constraints become
node affinity on NVIDIA GPU feature discovery's labels. The YAML's header comments say what
the cluster needs (image volumes: Kubernetes >= 1.31 with the ImageVolume feature gate, on by
default since 1.35).
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = HELP
    p.add_argument("ref", metavar="REF", help="registry.example.com/repo:tag, a tag in the local store, or DIR[:TAG]")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--kubernetes", dest="kind", action="store_const", const="kubernetes",
                      help="a Deployment and a Service; the model an OCI image volume (the default)")
    kind.add_argument("--csi", dest="kind", action="store_const", const="csi",
                      help="the same Deployment, the model mounted by the ModelPack CSI driver")
    kind.add_argument("--kserve", dest="kind", action="store_const", const="kserve",
                      help="a KServe InferenceService (serving.kserve.io/v1beta1)")
    p.set_defaults(kind="kubernetes")
    p.add_argument("--engine", metavar="NAME", help="the engine to serve with (default: see below)")
    p.add_argument("--platform", default=None, metavar="STAGE|TARGET",
                   help="which variant of a multi-platform artifact (default: see below)")
    p.add_argument("--context", type=int, default=None, metavar="N",
                   help="context length to serve (default: the runtime description's, else the model's)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="an engine parameter (repeatable)")
    p.add_argument("--name", metavar="NAME", help="the Kubernetes name (default: the model's name)")
    p.add_argument("--namespace", metavar="NS", help="the namespace to put the objects in (default: kubectl's)")
    p.add_argument("--replicas", type=int, default=1, metavar="N", help="pods to run (default: 1)")
    p.add_argument("--port", type=int, default=None, metavar="N", help="the engine's port (default: the engine's)")
    p.add_argument("--reference", metavar="REPOSITORY",
                   help="where the cluster pulls the artifact from (registry.example.com/team/model), for a "
                        "REF that names no registry; its tag or digest is replaced by the variant's digest")
    p.add_argument("-o", "--output", metavar="FILE", help="write the YAML to FILE (atomically), not to stdout")
    p.add_argument("--plain-http", action="store_true", help="talk to the registry over HTTP, not HTTPS")
    p.add_argument("--insecure", action="store_true", help="accept a registry certificate that does not verify")
    p.add_argument("--progress", default="auto", choices=["auto", "tty", "plain", "quiet", "json"],
                   help="progress display while pulling (default: tty on a terminal, else plain)")


def run(args: argparse.Namespace) -> int:
    from modelbuild.commands.run import parse_params
    from modelbuild.plugins import make_plugin_manager
    from modelbuild.progress import Emitter, make_renderer
    from modelbuild.runtime.resolve import resolve_variant

    _check_options(args)
    params = parse_params(args.param)
    plugins = make_plugin_manager()
    named = _named_engine(plugins, args.engine)
    select = functools.partial(cluster_choice, engine=named, targets=plugins.targets, ref=args.ref)
    emitter = Emitter(make_renderer(args.progress))
    try:
        variant = resolve_variant(args.ref, home=args.home, platform=args.platform or "", plain_http=args.plain_http,
                                  insecure=args.insecure, progress=emitter, select=select)
    finally:
        emitter.close()
    text = render(args, plugins, variant, params)
    if args.output:
        _write(Path(args.output), text)
    else:
        print(text, end="")
    return 0


def _check_options(args: argparse.Namespace) -> None:
    from modelbuild.errors import UsageError
    from modelbuild.runtime.kube import is_dns_label

    if args.replicas < 1:
        raise UsageError(f"--replicas {args.replicas}: a replica count is at least 1")
    if args.port is not None and not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: a port is 1 to 65535")
    if args.context is not None and not 1 <= args.context <= 2**31:
        raise UsageError(f"--context {args.context}: a context length is at least 1 and at most 2**31")
    for flag, value in (("--name", args.name), ("--namespace", args.namespace)):
        if value is not None and not is_dns_label(value):
            raise UsageError(f"{flag} {value}: not a Kubernetes name",
                             hint="lowercase letters, digits and '-', a letter first, at most 63 characters")


def _named_engine(plugins: Any, name: str | None) -> Engine | None:
    """The engine ``--engine`` names, before a variant is chosen (it decides which); an
    unknown name gets choose_engine's own error, asked with a model no engine is shown."""
    from modelbuild.api import EngineModel
    from modelbuild.runtime.engines import choose_engine

    if name is None:
        return None
    if name not in plugins.engines:
        choose_engine(plugins, EngineModel(name="", path=PurePosixPath("/")), name, need_installed=False)
    return plugins.engines.get(name)


# -- the variant, for a cluster ------------------------------------------------------------------
def cluster_choice(index: dict[str, Any], platform: str, *, engine: Engine | None, targets: Any, ref: str) -> Choice:
    """The index entry to deploy (the help's "Which variant"); Kubernetes nodes run Linux,
    so an entry for another OS is refused."""
    from modelbuild.errors import UsageError
    from modelbuild.oci.verify import shown
    from modelbuild.targets import HostInfo, describe_entry, select_entry

    entries = [e for e in index.get("manifests", []) if isinstance(e, dict)]
    listing = ", ".join(describe_entry(e) for e in entries) or "none"
    if platform:
        # several entries of one name differ by architecture: amd64, the common node
        choice = select_entry(index, platform, HostInfo("linux", "amd64"), targets)
    elif engine is None:
        raise UsageError(f"{shown(ref)} has {len(entries)} variants: {listing}",
                         hint="choose one with --platform NAME, or name an --engine to pick the one it runs")
    else:
        choice = _engine_choice(entries, engine, targets, ref)
    system = (choice.descriptor.get("platform") or {}).get("os", "linux")
    if system != "linux":
        raise UsageError(f"variant {shown(choice.stage)} is built for {shown(str(system))}: Kubernetes nodes run Linux",
                         hint=f"choose another with --platform NAME ({listing})")
    return choice


def _engine_choice(entries: list[dict[str, Any]], engine: Engine, targets: Any, ref: str) -> Choice:
    """The first entry the engine runs (its target and format), GPU targets first."""
    from modelbuild.errors import UsageError
    from modelbuild.oci.verify import shown
    from modelbuild.targets import ANN_FORMAT, Choice, ConstraintError, describe_entry, entry_stage

    fits: list[tuple[bool, int, dict[str, Any], Any]] = []
    why: list[str] = []
    for i, entry in enumerate(entries):
        try:
            stage = entry_stage(entry)
        except ConstraintError:
            why.append(f"{describe_entry(entry)}: its requirements do not parse")
            continue
        fmt = (entry.get("annotations") or {}).get(ANN_FORMAT, "")
        if stage.target not in engine.targets:
            why.append(f"{describe_entry(entry)}: {engine.name} runs {', '.join(engine.targets) or 'no target'}")
        elif fmt and fmt not in engine.formats:
            why.append(f"{describe_entry(entry)}: {engine.name} loads {', '.join(engine.formats)}, not {shown(fmt)}")
        else:
            generic = targets.get(stage.target).generic if stage.target in targets else stage.target == "cpu"
            fits.append((generic, i, entry, stage))
    if not fits:
        raise UsageError(f"engine {engine.name} runs none of the variants of {shown(ref)}: {'; '.join(why)}",
                         hint="choose one with --platform NAME and an engine that runs it")
    _generic, _i, entry, stage = min(fits, key=lambda fit: (fit[0], fit[1]))
    return Choice(entry, stage.name, stage.target)


def pinned_reference(variant: Variant, override: str | None) -> str:
    """``host/repository@<variant digest>``: the repository the reference (or --reference)
    names, pinned to the variant's manifest."""
    from modelbuild.errors import UsageError
    from modelbuild.oci.transfer import names_registry, remote_ref

    if override is not None:
        if not names_registry(override):
            raise UsageError(f"--reference {override}: names no registry",
                             hint="write it as registry.example.com/team/model")
        host, repo, _name, _normalised = remote_ref(override)
        return f"{host}/{repo}@{variant.digest}"
    if variant.remote is None:
        raise UsageError(f"{variant.shown} names no registry, so a cluster cannot pull it",
                         hint=f"push it: modelbuild push {variant.shown} registry.example.com/team/NAME:TAG, then add "
                              "--reference registry.example.com/team/NAME")
    return f"{variant.remote}@{variant.digest}"


# -- the manifests ---------------------------------------------------------------------------------
def render(args: argparse.Namespace, plugins: Any, variant: Variant, params: dict[str, str]) -> str:
    """The YAML for the chosen variant: its engine (or KServe runtime), memory, placement."""
    from modelbuild.runtime import kube
    from modelbuild.runtime.kube_yaml import dump_all
    from modelbuild.runtime.resolve import engine_model, runtime_description

    reference = pinned_reference(variant, args.reference)
    description = runtime_description(variant)
    probe = engine_model(variant, kube.MODELS_ROOT, context=args.context, description=description)
    name = args.name or kube.dns_label(probe.name)
    mount = kube.KSERVE_MODEL_PATH if args.kind == "kserve" else kube.MODELS_ROOT / probe.name
    model = dataclasses.replace(probe, path=mount)
    native = _native(args, model, plugins) if args.kind == "kserve" and args.engine is None else None
    if native is not None:
        server: Any = native
        server_name = f"KServe {native.runtime}"
    else:
        server, server_name = _engine_container(args, plugins, model, description, params)
    workload = kube.Workload(
        name=name, reference=reference, digest=variant.digest, mount_path=mount, server=server_name,
        namespace=args.namespace, replicas=args.replicas, kind=args.kind, source=variant.shown,
        index_digest=variant.index_digest, target=model.target, memory=memory_need(variant, model.context_length),
        scheduling=scheduling(plugins, variant, model.target))
    return dump_all(kube.manifests(workload, server), kube.header(workload, server))


def _engine_container(args: argparse.Namespace, plugins: Any, model: EngineModel, description: Any,
                      params: dict[str, str]) -> tuple[Any, str]:
    """The chosen engine's container for *model*, checked as the core checks a plugin's
    answer (a wrong type, or a file path that is not absolute, is the plugin's bug)."""
    from modelbuild.api import Container
    from modelbuild.errors import PluginError
    from modelbuild.runtime.engines import check_params, choose_engine

    preferred = [e.name for e in getattr(description, "engines", ())]
    engine = choose_engine(plugins, model, args.engine, preferred, need_installed=False)
    check_params(engine, params, "--param")
    described = next((e.params for e in getattr(description, "engines", ()) if e.name == engine.name), {})
    model = dataclasses.replace(model, params={**described, **params})
    c = engine.container(model, port=args.port or engine.default_port)
    if not isinstance(c, Container):
        raise PluginError(f"engine {engine.name}: container() returned {type(c).__name__}, not a Container")
    relative = [path for path in c.files if not path.startswith("/")]
    if relative:
        raise PluginError(f"engine {engine.name}: container file {relative[0]!r} is not an absolute path")
    return c, engine.name


# KServe's ClusterServingRuntime for a Hugging Face checkpoint (config/runtimes at v0.20.0): it
# loads --model_dir, /mnt/models by default; its image is built for CPUs and NVIDIA GPUs
_KSERVE_HF = ("huggingface", "kserve-huggingfaceserver", ("", "cpu", "cuda"))


def _native(args: argparse.Namespace, model: EngineModel, plugins: Any) -> Any:
    """KServe's own runtime for *model*, when it has one (else None: an engine serves it).
    Options that only an engine's container takes are refused with it."""
    from modelbuild.errors import UsageError
    from modelbuild.runtime.kube import NativeModel

    fmt, runtime, targets = _KSERVE_HF
    if model.format != "safetensors" or "config.json" not in model.files or model.target not in targets:
        return None
    given = [flag for flag, value in (("--param", args.param), ("--port", args.port), ("--context", args.context))
             if value]
    if given:
        raise UsageError(f"{given[0]} is for an engine's container; KServe's {runtime} serves this variant",
                         hint="name the engine with --engine NAME")
    target = plugins.targets.get(model.target) if model.target in plugins.targets else None
    return NativeModel(fmt, runtime, getattr(target, "accelerator", None) or "")


def memory_need(variant: Variant, context: int | None) -> MemoryNeed:
    """The estimate at *context* (docs/spec/runtime.md §2); without an attention shape to
    size the KV cache, the weights alone (the header says so)."""
    from modelbuild.runtime.kube import MemoryNeed
    from modelbuild.runtime.resolve import memory_of

    estimate = memory_of(variant, context)
    if estimate is not None:
        return MemoryNeed(estimate.weights, estimate.kv_cache, estimate.context)
    weights = sum(layer.size for layer in variant.node.parts.layers
                  if ".weight." in layer.media_type and ".weight.config." not in layer.media_type)
    return MemoryNeed(weights)


def scheduling(plugins: Any, variant: Variant, target_name: str) -> dict[str, Any]:
    """The pod-spec fields the variant's target (*target_name*: the index entry's, else the
    runtime description's) asks for through its optional ``scheduling`` member
    (plugins/targets.py); none from a target without it, or an unknown one. The stage's
    constraints are the index entry's."""
    from modelbuild.errors import PluginError, UsageError
    from modelbuild.targets import ANN_TARGET, ConstraintError, entry_stage

    target = plugins.targets.get(target_name) if target_name in plugins.targets else None
    member = getattr(target, "scheduling", None)
    if member is None:
        return {}
    try:
        stage = entry_stage({"annotations": {ANN_TARGET: target_name, **variant.annotations}})
    except ConstraintError as exc:  # an index written by another tool
        raise UsageError(f"variant {variant.stage}: its requirements do not parse: {exc}") from None
    fields = member(stage)
    if not isinstance(fields, dict):
        raise PluginError(f"target {target_name}: scheduling() returned {type(fields).__name__}, not a dict")
    return fields


def _write(path: Path, text: str) -> None:
    from modelbuild.errors import UsageError
    from modelbuild.storage.files import atomic_write

    if not path.parent.is_dir():
        raise UsageError(f"-o {path}: no directory {path.parent}")
    try:
        atomic_write(path, text.encode())
    except OSError as exc:
        raise UsageError(f"-o {path}: {exc.strerror}") from None
