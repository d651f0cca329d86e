"""The native step loop: :mod:`rlntm_demo.fast.fused`'s episode in C++, compiled on first use.

The RL-NTM spends its update on the number of tensor operations a step runs, not on their
arithmetic (:mod:`rlntm_demo.fast.fused` explains why). ``csrc/fused_step.cpp`` is
:class:`rlntm_demo.fast.fused.Episode` in C++: each step is one C++ node of the autograd graph, the
heads' bookkeeping and the elementwise arithmetic are plain loops, and torch runs only the matrix
products and the vectorized ``tanh``. An update of the ``bench`` configuration
takes about half as long as with the Python loop (:ref:`training-speed`). The values and
gradients agree with the Python loop's up to rounding (``tests/rlntm_demo/fast/test_native.py``), so
a seeded run reproduces with the same loop, not across the two.

The extension is built with :func:`torch.utils.cpp_extension.load` the first time a machine needs
it (about half a minute; a C++ compiler and ``ninja`` are needed; with AVX2 instructions where
the CPU has them) and loaded afterwards from a folder named for the source, the torch and Python
versions and the compiler flags under ``$TORCH_EXTENSIONS_DIR`` (by default
``~/.cache/torch_extensions``). ``rlntm-demo build`` builds it ahead of time. The build is safe
to interrupt and to start from several processes at once (:func:`load`):

* each build runs in a private folder of its own, and its library is moved into place with one
  atomic rename, so the shared folder holds either no library or a whole one, whatever happens
  to a build half-way;
* one process builds at a time, under an advisory lock (``flock``) that the operating system
  releases when its holder ends, however it ends; the others say whom they wait for and load the
  library when it appears. A wait is bounded (:data:`WAIT_SECONDS`): past it, the waiting process
  builds a private copy of its own.

Where it cannot be built, a :class:`RuntimeWarning` says what failed (no compiler, no ``ninja``,
the compiler's first error, or a library that does not load) and the Python loop is used. The
environment variable ``RLNTM_NATIVE=0`` turns it off.

>>> module = extension()
>>> module is None or hasattr(module, "Episode")
True
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import platform
import re
import secrets
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch

try:
    import fcntl
except ImportError:  # Windows: no lock; the private builds and the atomic rename keep it safe
    fcntl = None  # type: ignore[assignment]

__all__ = ["SWITCH", "WAIT_SECONDS", "BuildError", "build", "extension", "load"]

SWITCH = "RLNTM_NATIVE"
"""The environment variable that turns the native step loop off when set to ``0``."""

WAIT_SECONDS = 300.0
"""How long a process waits for another one's build before it builds a private copy: a build
takes about half a minute, several times that on a loaded machine."""

_SOURCE = Path(__file__).with_name("csrc") / "fused_step.cpp"
_STEM = "rlntm_fused_step"
_LIBRARY_SUFFIX = ".pyd" if sys.platform == "win32" else ".so"
# A library is loaded at most once per process: loading it again from the path it was moved to
# would run its module initialization twice, which pybind11 refuses.
_LOADED: dict[str, ModuleType] = {}


class BuildError(RuntimeError):
    """The extension could not be built or loaded; the message says what failed."""


def _flags() -> list[str]:
    """The compiler flags: optimized, and with AVX2 and FMA instructions where torch itself found
    them on this CPU (x86-64, GCC or Clang), for the elementwise loops. The flags are part of the
    build folder's name, so a machine without them never loads a build that uses them."""
    flags = ["-O3"]
    if sys.platform != "win32" and platform.machine().lower() in ("x86_64", "amd64"):
        if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
            flags += ["-mavx2", "-mfma"]
    return flags


def _extensions_folder() -> Path:
    """Where torch keeps extensions: ``$TORCH_EXTENSIONS_DIR``, by default under the user's cache."""
    base = os.environ.get("TORCH_EXTENSIONS_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"
    return Path(base)


@functools.cache
def extension() -> ModuleType | None:
    """The compiled extension module (built on the first call of a machine), or ``None`` when it
    is turned off or cannot be built (with a :class:`RuntimeWarning` that says what failed)."""
    if os.environ.get(SWITCH, "1").strip() == "0":
        return None
    try:
        return build()
    except BuildError as error:
        warnings.warn(
            f"rlntm_demo: the native step loop is not used: {error}. Training uses the slower "
            f"Python loop; set {SWITCH}=0 to choose it without this warning.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def build() -> ModuleType:
    """The step loop's extension, built here where no process has built it yet (what
    ``rlntm-demo build`` runs, and :func:`extension` on first use); whatever :data:`SWITCH` says.

    Raises:
        BuildError: it could not be built or loaded; the message says what failed.
    """
    return load(_SOURCE, _STEM, _flags())


def load(source: Path, stem: str, flags: Sequence[str], *, folder: Path | None = None,
         wait_seconds: float = WAIT_SECONDS) -> ModuleType:
    """Load the extension compiled from ``source``, building it first where no process has.

    Arguments:
        source: the C++ file (one ``PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)``).
        stem: the start of the module's name; a hash of the source, the torch and Python versions
            and the flags completes it, so a changed source or flag never loads an old build.
        flags: extra compiler flags.
        folder: where builds are kept (default: ``$TORCH_EXTENSIONS_DIR``, as torch's).
        wait_seconds: how long to wait for another process's build before building a private copy.

    Returns:
        The extension module.

    Raises:
        BuildError: no compiler or ``ninja`` was found, the compilation failed (its first error
            line is in the message), or the library does not load.
    """
    code = source.read_bytes()
    key = hashlib.sha256(b"\0".join([code, torch.__version__.encode(), sys.version.encode(), " ".join(flags).encode()]))
    name = f"{stem}_{key.hexdigest()[:12]}"
    if name in _LOADED:
        return _LOADED[name]
    home = (folder or _extensions_folder()) / name
    library = home / f"{name}{_LIBRARY_SUFFIX}"
    if not library.exists():
        home.mkdir(parents=True, exist_ok=True)
        with _build_lock(home / "build.lock", library, wait_seconds) as locked:
            if not library.exists():
                note = "" if locked or fcntl is None else " (a private copy: another process holds the build lock)"
                print(f"rlntm_demo: compiling the native step loop into {home}{note} (once, about half a minute)",
                      file=sys.stderr, flush=True)
                _LOADED[name] = _build(source, name, list(flags), home, library, tidy=locked)
                return _LOADED[name]
    _LOADED[name] = _import(name, library)
    return _LOADED[name]


@contextmanager
def _build_lock(path: Path, library: Path, wait_seconds: float) -> Iterator[bool]:
    """Hold the build lock at ``path``; yields whether it is held (``False`` when the wait ran
    out, or the library appeared meanwhile, or the platform has no ``flock``).

    The lock is ``flock`` on an open file, which the operating system drops when its holder exits,
    killed or not, so no lock outlives its build. The file records the holder's process id, for the
    message of the processes that wait."""
    if fcntl is None:
        yield False
        return
    with open(path, "a+") as handle:
        deadline = time.monotonic() + wait_seconds
        said = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if library.exists():
                    yield False
                    return
                if time.monotonic() > deadline:
                    print(f"rlntm_demo: the build lock {path} is still held after {wait_seconds:.0f} s; "
                          f"building a private copy", file=sys.stderr, flush=True)
                    yield False
                    return
                if not said:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    print(f"rlntm_demo: waiting for {holder} to finish compiling the native step loop "
                          f"(at most {wait_seconds:.0f} s)", file=sys.stderr, flush=True)
                    said = True
                time.sleep(0.2)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {socket.gethostname()}")
            handle.flush()
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(source: Path, name: str, flags: list[str], home: Path, library: Path, *, tidy: bool) -> ModuleType:
    """Compile ``source`` in a private folder under ``home``, move the library to ``library`` in one
    rename, and return the loaded module. With ``tidy`` (the lock is held, so no other build
    runs), the private folders that earlier builds left, interrupted or failed, are removed first."""
    compiler = os.environ.get("CXX", "cl" if sys.platform == "win32" else "c++")
    if shutil.which(compiler) is None:
        raise BuildError(f"no C++ compiler: {compiler!r} is not on the PATH (install g++ or clang++, or set CXX)")
    if shutil.which("ninja") is None:
        try:
            # torch runs ``ninja`` from the PATH, which lacks the environment's scripts folder
            # when its Python is run without activating it; the ninja package knows its binary.
            import ninja  # type: ignore[import-untyped]
        except ImportError:
            raise BuildError("ninja is not installed (pip install ninja)") from None
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    if tidy:
        for leftover in home.glob("build-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    private = home / f"build-{os.getpid()}-{secrets.token_hex(4)}"
    private.mkdir()
    from torch.utils import cpp_extension

    # torch numbers a name it has built before in this process (``name_v1``) when the build folder
    # differs, and every build here has its own folder: forget the earlier build so the name, and
    # the module's init function, stay those the shared library is loaded by.
    cpp_extension.JIT_EXTENSION_VERSIONER.entries.pop(name, None)
    try:
        with warnings.catch_warnings():
            # torch warns about compiler versions it has not been tested with; the tests compare
            # the result with the Python loop instead.
            warnings.simplefilter("ignore")
            module = cpp_extension.load(name=name, sources=[str(source)], extra_cflags=flags, build_directory=str(private))
    except Exception as error:  # noqa: BLE001 - what failed goes into the message
        raise BuildError(f"compiling {source.name} with {compiler} failed ({_first_error(error)}; "
                         f"the build files are kept in {private})") from error
    os.replace(private / library.name, library)
    module.__file__ = str(library)
    shutil.rmtree(private, ignore_errors=True)
    return module


def _first_error(error: Exception) -> str:
    """The line of a build failure that says what went wrong: the compiler's first ``error`` line
    (``file:line:column: error: ...``) where there is one (torch's message puts the whole ninja output after its first line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines[1:]:
        if re.search(r"\b(fatal )?error:", line, re.IGNORECASE):
            return line
    return lines[0] if lines else type(error).__name__


def _import(name: str, library: Path) -> ModuleType:
    """Load the built library at ``library`` as the module ``name``."""
    try:
        spec = importlib.util.spec_from_file_location(name, library)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - what failed goes into the message
        raise BuildError(f"{library} does not load ({error}); delete it to rebuild") from error
    return module
