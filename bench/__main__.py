"""python -m bench <name> [args...] -> bench/<name>.py:main(argv)."""
from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                  if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m bench NAME [args...]\nbenchmarks: {' '.join(available())}")
        return 0 if argv else 2
    name = argv[0]
    if name not in available():
        print(f"no benchmark {name!r}; have: {' '.join(available())}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{name}")
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
