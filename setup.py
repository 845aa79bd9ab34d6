"""Build of videoconv's C++/CUDA extension (`videoconv._C`).

The extension is optional: the package imports and runs without it (the reference and Triton
backends are pure Python). It is built

* for the CPU from csrc/*.cpp and csrc/cpu/*.cpp, always, and
* with csrc/cuda/*.cu added only where the installed torch has CUDA (``torch.version.cuda``) and
  a CUDA toolkit is found. On a CPU-only torch the .cu files are still compiled by the tests with
  ``nvcc -c`` (see tests/test_cuda_sources.py), never linked.

Install with ``pip install --no-build-isolation -e .`` so the build uses the torch already
installed (a CPU wheel here, a user's CUDA torch elsewhere) instead of downloading another.
Set ``VIDEOCONV_NO_EXTENSION=1`` to skip the extension entirely.

The CUDA build needs the CUTLASS headers (``pip install nvidia-cutlass``, or ``CUTLASS_PATH``
pointing at a CUTLASS checkout) and compiles for ``TORCH_CUDA_ARCH_LIST`` (default "8.0;9.0":
sm_80 code also runs on sm_86/sm_89). Without CUTLASS it fails with a message saying so.
"""

import glob
import importlib.util
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _cuda_sources_module():
    """videoconv/cuda_sources.py loaded by path: the CUTLASS lookup and nvcc flags shared with the
    compile check, without importing the (not yet built) package."""
    path = os.path.join(HERE, "videoconv", "cuda_sources.py")
    spec = importlib.util.spec_from_file_location("_videoconv_cuda_sources", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extensions():
    if os.environ.get("VIDEOCONV_NO_EXTENSION", "0") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    def rel(pattern):
        return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))

    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cuda_sources = rel("csrc/cuda/*.cu")
    with_cuda = (
        torch.version.cuda is not None
        and CUDA_HOME is not None
        and os.environ.get("VIDEOCONV_NO_CUDA", "0") != "1"
    )
    extra_compile_args = {"cxx": ["-O3", "-fopenmp"]}
    define_macros = []
    if with_cuda:
        shared = _cuda_sources_module()
        cutlass_dirs = shared.cutlass_include_dirs()
        if not cutlass_dirs:
            raise RuntimeError(
                "videoconv's CUDA kernels need the CUTLASS headers: pip install nvidia-cutlass "
                "(or set CUTLASS_PATH to a CUTLASS checkout), or build without CUDA with "
                "VIDEOCONV_NO_CUDA=1"
            )
        # torch.utils.cpp_extension turns TORCH_CUDA_ARCH_LIST into -gencode flags; without it
        # it would target only the GPUs of the build machine (or every arch it knows).
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        extra_compile_args["nvcc"] = list(shared.BUILD_NVCC_FLAGS) + ["-lineinfo"]
        define_macros.append(("VIDEOCONV_WITH_CUDA", None))
        ext = CUDAExtension(
            "videoconv._C",
            sources + cuda_sources,
            include_dirs=cutlass_dirs + [os.path.join(HERE, "csrc")],
            extra_compile_args=extra_compile_args,
            define_macros=define_macros,
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "videoconv._C",
            sources,
            extra_compile_args=extra_compile_args,
            define_macros=define_macros,
            extra_link_args=["-fopenmp"],
        )
    # ninja builds the translation units in parallel and rebuilds only what changed.
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
