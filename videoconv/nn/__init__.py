"""Fused drop-in modules (``videoconv.nn``).

* :class:`Conv3dBNAct` — Conv3d -> BatchNorm3d [+ residual] -> ReLU/SiLU/identity
* :class:`Conv2Plus1dBNAct` — a (2+1)D unit (spatial and temporal conv, each with BN and act)

Eval mode runs the fused operators (:mod:`videoconv.ops`) with the BatchNorms folded
(:mod:`videoconv.nn.folding`); train mode keeps BatchNorm's training semantics exactly.
Both keep the original modules as submodules, so ``state_dict`` keys are the original ones.
"""

from .folding import fold_batch_norm, fold_conv_bn
from .conv3d_bn_act import Conv3dBNAct
from .conv2plus1d_bn_act import Conv2Plus1dBNAct
from ._common import FusedModuleBase

__all__ = ["Conv3dBNAct", "Conv2Plus1dBNAct", "FusedModuleBase", "fold_batch_norm", "fold_conv_bn"]
