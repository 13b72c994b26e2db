"""``python -m nnal.bench``: the command line of :func:`nnal.bench.selection.main`."""

from __future__ import annotations

from nnal.bench.selection import main

if __name__ == "__main__":
    raise SystemExit(main())
