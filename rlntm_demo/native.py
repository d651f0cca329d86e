"""The native step loop: :mod:`rlntm_demo.fused`'s episode in C++, compiled on first use.

The RL-NTM spends its update on the number of tensor operations a step runs, not on their
arithmetic (:mod:`rlntm_demo.fused` explains why). ``csrc/fused_step.cpp`` is
:class:`rlntm_demo.fused.Episode` in C++: each step is one C++ node of the autograd graph, the
heads' bookkeeping and the elementwise arithmetic are plain loops, and torch runs only the matrix
products and the vectorized ``tanh``. An update of the ``bench`` configuration
takes about half as long as with the Python loop (:ref:`training-speed`). The values and
gradients agree with the Python loop's up to rounding (``tests/rlntm_demo/test_native.py``), so
a seeded run reproduces with the same loop, not across the two.

The extension is built with :func:`torch.utils.cpp_extension.load` the first time a process needs
it (about half a minute; a C++ compiler and ``ninja`` are needed; with AVX2 instructions where
the CPU has them), into a folder named for the source, the torch and Python versions and the
compiler flags under ``$TORCH_EXTENSIONS_DIR`` (by default
``~/.cache/torch_extensions``), and loaded from there afterwards. Where it cannot be built, a
:class:`RuntimeWarning` says why and the Python loop is used. The environment variable
``RLNTM_NATIVE=0`` turns it off.

>>> module = extension()
>>> module is None or hasattr(module, "Episode")
True
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["SWITCH", "extension"]

SWITCH = "RLNTM_NATIVE"
"""The environment variable that turns the native step loop off when set to ``0``."""

_SOURCE = Path(__file__).with_name("csrc") / "fused_step.cpp"


def _flags() -> list[str]:
    """The compiler flags: optimized, and with AVX2 and FMA instructions where torch itself found
    them on this CPU (x86-64, GCC or Clang), for the elementwise loops. The flags are part of the
    build folder's name, so a machine without them never loads a build that uses them."""
    flags = ["-O3"]
    if sys.platform != "win32" and platform.machine().lower() in ("x86_64", "amd64"):
        if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
            flags += ["-mavx2", "-mfma"]
    return flags


@functools.cache
def extension() -> ModuleType | None:
    """The compiled extension module (built on the first call of a machine), or ``None`` when it
    is turned off or cannot be built (with a :class:`RuntimeWarning` that says why)."""
    if os.environ.get(SWITCH, "1").strip() == "0":
        return None
    source = _SOURCE.read_bytes()
    flags = _flags()
    key = hashlib.sha256(b"\0".join([source, torch.__version__.encode(), sys.version.encode(), " ".join(flags).encode()]))
    name = f"rlntm_fused_step_{key.hexdigest()[:12]}"
    base = os.environ.get("TORCH_EXTENSIONS_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"
    folder = Path(base) / name
    if not (folder / f"{name}.so").exists():
        print(f"rlntm_demo: compiling the native step loop into {folder} (once, about half a minute)", file=sys.stderr, flush=True)
    try:
        from torch.utils import cpp_extension

        if shutil.which("ninja") is None:
            # torch runs ``ninja`` from the PATH, which lacks the environment's scripts folder
            # when its Python is run without activating it; the ninja package knows its binary.
            import ninja  # type: ignore[import-untyped]

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")

        folder.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # torch warns about compiler versions it has not been tested with; the tests compare
            # the result with the Python loop instead.
            warnings.simplefilter("ignore")
            return cpp_extension.load(name=name, sources=[str(_SOURCE)], extra_cflags=flags, build_directory=str(folder))
    except Exception as error:  # noqa: BLE001 - any failure to build means: use the Python loop
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(
            f"rlntm_demo: the native step loop could not be built ({first_line}); training uses the "
            f"slower Python loop. Install a C++ compiler (g++ or clang++) and ninja (pip install ninja) "
            f"to build it, or set {SWITCH}=0 to use the Python loop without this warning.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
