"""Building the native extension (:func:`rlntm_demo.fast.native.load`): interrupted, concurrent, failing.

Each test builds a one-function extension (a few seconds to compile, against half a minute for the
step loop) into a fresh folder, most of them in child processes started as a user's commands are:
a build killed half-way must leave the next process able to build, two processes started at once
must both load the library (one building, the other waiting with a message), and a failed build
must say what failed.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlntm_demo.fast import native

TINY = """
#include <pybind11/pybind11.h>
// {tag}
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {{ m.def("answer", [] {{ return 42; }}); }}
"""

# The child process: with a mode, it stops at one point of its build after writing a marker file,
# for good (so that the test can kill it exactly there) or, "hold", until the test releases it.
CHILD = """
import os, sys, time
from pathlib import Path
from torch.utils import cpp_extension
from rlntm_demo.fast import native

source, folder, mode, marker, wait = sys.argv[1:6]

def stop_here(original):
    def stopped(*args, **kwargs):
        Path(marker).write_text("stopped")
        if mode == "hold":
            release = Path(marker + ".release")
            deadline = time.monotonic() + 120
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            return original(*args, **kwargs)
        time.sleep(3600)
    return stopped

if mode in ("compiling", "hold"):
    cpp_extension._write_ninja_file_and_build_library = stop_here(cpp_extension._write_ninja_file_and_build_library)
elif mode == "publishing":
    os.replace = stop_here(os.replace)
module = native.load(Path(source), "tiny", [], folder=Path(folder), wait_seconds=float(wait))
print("answer", module.answer())
"""


def tiny_source(tmp_path: Path) -> Path:
    """A source of its own for the test (its name is part of the module's), so that no build of
    another test, in this process or on disk, stands in for this one's."""
    source = tmp_path / "tiny.cpp"
    source.write_text(TINY.format(tag=tmp_path.name))
    return source


def start(tmp_path: Path, mode: str = "", marker: str = "", wait: float = 120,
          stderr: Path | None = None) -> subprocess.Popen[str]:
    """The child, building into ``tmp_path / "ext"``; its stderr is piped, or written to ``stderr``."""
    argv = [sys.executable, "-c", CHILD, str(tiny_source(tmp_path)), str(tmp_path / "ext"), mode,
            marker or str(tmp_path / "marker"), str(wait)]
    if stderr is None:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    with stderr.open("w") as log:  # the child keeps its own handle
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)


def finish(process: subprocess.Popen[str], timeout: float = 240, stderr: Path | None = None) -> tuple[str, str]:
    out, err = process.communicate(timeout=timeout)
    if stderr is not None:
        err = stderr.read_text()
    assert process.returncode == 0, err
    return out, err


@pytest.mark.parametrize("point", ["compiling", "publishing"])
def test_a_build_killed_half_way_leaves_the_next_run_able_to_build(point: str, tmp_path: Path) -> None:
    """Killed inside torch's build (its ``lock`` file and ninja's files in place, the build lock
    held) or with the library built but not yet moved into place: the next process builds and
    loads the library, without waiting, and removes what the killed build left."""
    marker = tmp_path / "marker"
    killed = start(tmp_path, point, str(marker))
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()
        time.sleep(0.1)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate()
    home = next((tmp_path / "ext").iterdir())
    leftovers = list(home.glob("build-*"))
    assert leftovers and not list(home.glob("*.so"))
    if point == "compiling":
        assert (leftovers[0] / "lock").exists()  # torch's own lock, which used to hang every later run

    out, err = finish(start(tmp_path, wait=60), timeout=120)
    assert out.strip() == "answer 42"
    assert "compiling" in err and "waiting" not in err
    assert [path.name for path in home.iterdir() if path.name.startswith("build-")] == []
    assert len(list(home.glob("*.so"))) == 1


def test_two_processes_started_at_once_both_load_the_library_and_one_builds(tmp_path: Path) -> None:
    """Started together: whichever takes the build lock holds inside its build until the other
    has said whom it waits for (so the two overlap however fast the machine is); then both load
    the one library, built once."""
    marker = tmp_path / "marker"
    logs = [tmp_path / f"stderr{i}" for i in range(2)]
    processes = [start(tmp_path, "hold", str(marker), stderr=log) for log in logs]
    deadline = time.monotonic() + 120
    while not (marker.exists() and any("waiting for process" in log.read_text() for log in logs)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), [log.read_text() for log in logs]
        time.sleep(0.1)
    Path(str(marker) + ".release").touch()
    results = [finish(process, stderr=log) for process, log in zip(processes, logs)]
    assert [out.strip() for out, _ in results] == ["answer 42", "answer 42"]
    errors = "".join(err for _, err in results)
    assert errors.count("rlntm_demo: compiling") == 1, errors
    assert errors.count("rlntm_demo: waiting for process") == 1, errors
    builder, waiter = (processes[0], results[1][1]) if "waiting" in results[1][1] else (processes[1], results[0][1])
    assert f"waiting for process {builder.pid} on " in waiter
    assert len(list((tmp_path / "ext").glob("*/*.so"))) == 1


def test_a_wait_past_its_bound_builds_a_private_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A lock that stays held (here by the test itself) delays a process by the bound, no more."""
    source = tiny_source(tmp_path)
    native.load(source, "tiny", [], folder=tmp_path / "probe", wait_seconds=0)  # learn the folder's name
    name = next((tmp_path / "probe").iterdir()).name
    home = tmp_path / "ext" / name
    home.mkdir(parents=True)
    native._LOADED.pop(name)
    with open(home / "build.lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        holder.write("process 1 on elsewhere")
        holder.flush()
        began = time.monotonic()
        module = native.load(source, "tiny", [], folder=tmp_path / "ext", wait_seconds=1)
        assert time.monotonic() - began < 60
    assert module.answer() == 42
    err = capsys.readouterr().err
    assert "waiting for process 1 on elsewhere to finish compiling the native step loop (at most 1 s)" in err
    assert "is still held after 1 s; building a private copy" in err
    assert (home / f"{name}.so").exists()


def test_a_compile_error_is_reported_with_the_compilers_error_line(tmp_path: Path) -> None:
    source = tmp_path / "broken.cpp"
    source.write_text(TINY.format(tag=tmp_path.name).replace("return 42;", "return undeclared_name;"))
    with pytest.raises(native.BuildError, match=r"compiling broken\.cpp with \S+ failed \(.*error.*undeclared_name.*; "
                                                r"the build files are kept in .*build-"):
        native.load(source, "broken", [], folder=tmp_path)


def test_a_missing_compiler_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-c++")
    with pytest.raises(native.BuildError, match=r"no C\+\+ compiler: 'no-such-c\+\+' is not on the PATH \(install g\+\+ or clang\+\+, or set CXX\)"):
        native.load(tiny_source(tmp_path), "tiny", [], folder=tmp_path)


def test_a_missing_ninja_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    which = native.shutil.which
    monkeypatch.setattr(native.shutil, "which", lambda name: None if name == "ninja" else which(name))
    monkeypatch.setitem(sys.modules, "ninja", None)  # the ninja package, not installed
    with pytest.raises(native.BuildError, match=r"ninja is not installed \(pip install ninja\)"):
        native.load(tiny_source(tmp_path), "tiny", [], folder=tmp_path)


def test_a_library_that_does_not_load_is_named_with_its_path(tmp_path: Path) -> None:
    source = tiny_source(tmp_path)
    native.load(source, "tiny", [], folder=tmp_path / "probe", wait_seconds=0)
    name = next((tmp_path / "probe").iterdir()).name
    native._LOADED.pop(name)
    library = tmp_path / "ext" / name / f"{name}.so"
    library.parent.mkdir(parents=True)
    library.write_bytes(b"not a shared library")
    with pytest.raises(native.BuildError, match=rf"{library} does not load \(.*\); delete it to rebuild"):
        native.load(source, "tiny", [], folder=tmp_path / "ext")


def test_a_failed_build_warns_what_failed_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*_: object, **__: object) -> None:
        raise native.BuildError("no C++ compiler: 'c++' is not on the PATH (install g++ or clang++, or set CXX)")

    monkeypatch.setattr(native, "load", failing)
    monkeypatch.setenv(native.SWITCH, "1")
    native.extension.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"native step loop is not used: no C\+\+ compiler: 'c\+\+' .*"
                                                 r"slower Python loop; set RLNTM_NATIVE=0"):
            assert native.extension() is None
    finally:
        native.extension.cache_clear()
