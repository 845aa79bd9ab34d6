"""videoconv's Triton kernels (one module per op), used by the ``triton`` backend.

See :mod:`videoconv.triton._common` for the interpreter switch (``TRITON_INTERPRET=1`` before
import runs the kernels on CPU tensors).
"""
