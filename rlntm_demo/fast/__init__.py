"""The fast step, the reference step's checked twin: the same episode in few operations.

:mod:`rlntm_demo.reference` defines the model; the modules here compute the same values,
decisions and gradients faster, and ``tests/rlntm_demo/test_reference.py`` holds them equal to it
in float64 (every controller and option):

* :mod:`~rlntm_demo.fast.episode`: the episode's tables and weights arranged once, then the step
  loop (what ``ModelConfig(step_impl="fast")``, the default, runs);
* :mod:`~rlntm_demo.fast.fused`: each step as one autograd node with a hand-written backward;
* :mod:`~rlntm_demo.fast.native`: the same node in C++ (``csrc/fused_step.cpp``), compiled on
  first use, and how it is built.
"""
