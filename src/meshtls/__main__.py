"""``python -m meshtls``: the same as the ``meshtls`` command."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
