"""``python -m rlntm_demo``: the ``rlntm-demo`` command line (see :mod:`rlntm_demo.cli`)."""

from rlntm_demo.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
