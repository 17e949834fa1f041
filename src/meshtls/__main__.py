"""``python -m meshtls``: the same as the ``meshtls`` command."""

from ._entry import main

if __name__ == "__main__":
    raise SystemExit(main())
