"""``python -m reinforce_check``: the ``reinforce-check`` command line (see :mod:`reinforce_check.cli`)."""

from reinforce_check.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
