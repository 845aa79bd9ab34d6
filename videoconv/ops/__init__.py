"""videoconv's operators (``torch.ops.videoconv.*``): declarations, fakes, autograd, dispatch."""

from .schemas import SCHEMAS, declare_schemas

declare_schemas()

__all__ = ["SCHEMAS"]
