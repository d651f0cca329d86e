"""What a faster RL-NTM step could be built from: the LSTM cell's elementwise part three ways.

The RL-NTM's training update costs about 4.5 times a bare LSTM loop (``rlntm-demo bench``), and
what remains is the number of torch operations per step. This measures the options for the part
that every step runs, the LSTM cell after its matrix products, on pre-activations of the size of the
direct-access model at batch 200 (200 rows; 3 x 50 sigmoid gates and 50 candidates; cell state 200 x
50), float32, one thread:

* ``torch``: six torch operations (sigmoid, tanh, two products and an addition, tanh);
* ``torch.compile``: the same function compiled by inductor (one generated kernel);
* ``C++ loop``: one plain C++ loop over the elements (``torch.utils.cpp_extension.load_inline``,
  ``-O3 -march=native``), the starting point of a native step; skipped without a C++ compiler.

It also times a kept allocation against a reused one (``sigmoid`` into a fresh tensor that is kept,
as the values saved for backward are, against one written into the same buffer), which shows how
slow fresh memory is to touch on the machine.

Usage::

    python benchmarks/bench_step_kernels.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

ROWS, UNITS = 200, 50

_SOURCE = r"""
#include <torch/extension.h>
#include <cmath>

std::vector<torch::Tensor> cell(torch::Tensor z, torch::Tensor c) {
  const int64_t rows = z.size(0), units = c.size(1);
  auto h_out = torch::empty_like(c), c_out = torch::empty_like(c);
  const float* zp = z.data_ptr<float>();
  const float* cp = c.data_ptr<float>();
  float* hp = h_out.data_ptr<float>();
  float* np = c_out.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* zr = zp + r * 4 * units;
    for (int64_t j = 0; j < units; ++j) {
      const float i = 1.f / (1.f + std::exp(-zr[j]));
      const float f = 1.f / (1.f + std::exp(-zr[units + j]));
      const float o = 1.f / (1.f + std::exp(-zr[2 * units + j]));
      const float g = std::tanh(zr[3 * units + j]);
      const float state = f * cp[r * units + j] + i * g;
      np[r * units + j] = state;
      hp[r * units + j] = o * std::tanh(state);
    }
  }
  return {h_out, c_out};
}
"""


def torch_cell(z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gates = z[:, : 3 * UNITS].sigmoid()
    candidate = z[:, 3 * UNITS :].tanh()
    i, f, o = gates.chunk(3, 1)
    state = torch.addcmul(f * c, i, candidate)
    return o * state.tanh(), state


def microseconds(function: Callable[[], object], calls: int = 2000, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean time of one call, after a warm-up."""
    for _ in range(100):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(ROWS, 4 * UNITS, generator=generator)
    c = torch.randn(ROWS, UNITS, generator=generator)
    print(f"torch {torch.__version__}, 1 thread; LSTM cell elementwise part, {ROWS} x {4 * UNITS} pre-activations")
    print(f"  torch (6 operations):  {microseconds(lambda: torch_cell(z, c)):7.1f} us")
    compiled = torch.compile(torch_cell, dynamic=False)
    torch.testing.assert_close(compiled(z, c), torch_cell(z, c))
    print(f"  torch.compile:         {microseconds(lambda: compiled(z, c)):7.1f} us")
    try:
        from torch.utils.cpp_extension import load_inline

        native = load_inline("bench_step_kernels_cell", cpp_sources=_SOURCE, functions=["cell"],
                             extra_cflags=["-O3", "-march=native"])
    except Exception as error:  # no compiler or no ninja: say so and go on
        print(f"  C++ loop:              skipped ({type(error).__name__}: {str(error).splitlines()[0][:80]})")
    else:
        torch.testing.assert_close(tuple(native.cell(z, c)), torch_cell(z, c))
        print(f"  C++ loop:              {microseconds(lambda: native.cell(z, c)):7.1f} us")

    x = torch.randn(ROWS, 3 * UNITS, generator=generator)
    out = torch.empty_like(x)
    kept: list[torch.Tensor] = []
    reused = microseconds(lambda: torch.sigmoid(x, out=out))
    fresh = microseconds(lambda: kept.append(x.sigmoid()), calls=500, repeats=3)
    print(f"sigmoid of {ROWS} x {3 * UNITS}: into a reused buffer {reused:.1f} us, into fresh kept memory {fresh:.1f} us")


if __name__ == "__main__":
    main()
