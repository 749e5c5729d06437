"""What each kind of step does. One module per family of ops; ``CORE_OPS`` maps op names
(``Step.op``) to their implementation."""

from modelbuild.ops.artifact import ConfigOp, ExportOp, IndexOp, ManifestOp
from modelbuild.ops.base import ExecEnv, Op, Outcome, Stats, StepContext
from modelbuild.ops.files import DigestOp, SourceOp
from modelbuild.ops.layers import LayerOp, LayerSetOp
from modelbuild.ops.weights import DescribeOp, TransformOp

CORE_OPS: dict[str, Op] = {
    op.name: op
    for op in (SourceOp(), DigestOp(), LayerOp(), LayerSetOp(), TransformOp(), DescribeOp(), ConfigOp(), ManifestOp(),
               IndexOp(), ExportOp())
}

__all__ = ["CORE_OPS", "ExecEnv", "Op", "Outcome", "Stats", "StepContext"]
