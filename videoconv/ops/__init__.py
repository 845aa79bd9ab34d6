"""videoconv's operators (``torch.ops.videoconv.*``): declarations, fakes, autograd, dispatch.

* :func:`conv3d_bn_act` — ``act(conv3d(x, w) * scale + shift [+ residual])``
* :func:`conv2plus1d_bn_act` — a whole (2+1)D unit (spatial then temporal, or temporal first)
* :func:`channel_mean`, :func:`scale_act` — Squeeze-and-Excitation's global pool, and its
  rescaling together with the activation after it (one pass each; not convolutions, so outside
  the backend list)
* :func:`conv3d_bn_stats` — ``conv3d(x, w)`` plus the per-channel batch mean/variance of its
  output (training-mode BatchNorm), and :func:`conv3d_bn_act_train`, the whole training-mode
  Conv3d -> BatchNorm3d [+ residual] -> activation built on it

Each convolution op has a cpu/cuda kernel that picks a backend (:mod:`videoconv.backends`), a
fake kernel (same size and memory format as the real one) and an autograd formula.
"""

from .schemas import SCHEMAS, declare_schemas

declare_schemas()

# The registrations (kernels, fakes, autograd) run on import of these modules. The functions
# rebind the names ``videoconv.ops.conv3d_bn_act``/``conv2plus1d_bn_act`` to the entry points;
# the modules stay reachable through sys.modules (importlib.import_module).
from .conv3d_bn_act import conv3d_bn_act  # noqa: E402
from .conv2plus1d_bn_act import conv2plus1d_bn_act  # noqa: E402
from .conv3d_bn_stats import conv3d_bn_stats  # noqa: E402
from .conv3d_bn_act_train import conv3d_bn_act_train  # noqa: E402
from .squeeze_excitation import channel_mean, scale_act  # noqa: E402
from ._validation import ACTIVATIONS  # noqa: E402

__all__ = ["SCHEMAS", "ACTIVATIONS", "conv3d_bn_act", "conv2plus1d_bn_act", "conv3d_bn_stats",
           "conv3d_bn_act_train", "channel_mean", "scale_act"]
