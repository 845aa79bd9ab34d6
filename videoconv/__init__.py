"""videoconv: fused 3D-convolution kernels for video models.

Layers (see DESIGN.md): ``videoconv.models`` (reference zoo), ``videoconv.analysis`` (parameters,
FLOPs, shapes, memory), ``videoconv.ops`` (the custom operators), ``videoconv.backends`` (which
implementation runs them).
"""

__version__ = "0.1.0.dev0"

from . import _extension  # noqa: E402  (registers the C++ schemas/kernels if built)
from . import ops  # noqa: E402
from . import analysis, backends, models  # noqa: E402

__all__ = ["__version__", "analysis", "backends", "models", "ops"]

from . import nn  # noqa: E402
from .fuse import fuse, fuse_report  # noqa: E402

__all__ += ["nn", "fuse", "fuse_report"]
