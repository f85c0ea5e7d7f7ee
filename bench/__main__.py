"""Run the benchmarks: ``python -m bench [NAME] [ARGS...]``.

``python -m bench`` runs every benchmark in ``BENCHES`` (arguments given without a name, e.g. ``--quick``,
go to each); ``python -m bench train --reference PATH`` runs one. A benchmark is a module with a
``main(argv) -> int``; add one by adding its name here.
"""

from __future__ import annotations

import importlib
import sys

# Name -> module with main(argv: list[str]) -> int exit code. Imported only when run.
BENCHES = {
    "train": "bench.train",
    "render": "bench.render",
    "sweep": "bench.sweep",
    "score": "bench.score",
    "halving": "bench.halving",
    "best_step": "bench.best_step",
    "train_breadth": "bench.train_breadth",
    "adapter_kinds": "bench.adapter_kinds",
    "ema": "bench.ema",
    "pack": "bench.pack",
}
# Run by name only (not by ``python -m bench``): the device check, for a machine with a GPU, and the real-size
# SDXL run on the CPU (builds a 7 GB model).
ON_DEMAND = {"gpu": "bench.gpu", "sdxl_cpu": "bench.sdxl_cpu"}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to one benchmark, or run them all.

    Args:
        argv: ``[NAME] [ARGS...]``; without a known NAME every benchmark runs with ARGS.

    Returns:
        0 when every benchmark returned 0, else the first non-zero code.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(
            __doc__.strip()
            + "\n\nBenchmarks: "
            + ", ".join(BENCHES | ON_DEMAND)
            + " (python -m bench NAME --help)"
        )
        return 0
    if argv and not argv[0].startswith("-"):
        known = BENCHES | ON_DEMAND
        if argv[0] not in known:
            print(f"unknown benchmark {argv[0]!r}; known: {', '.join(known)}", file=sys.stderr)
            return 2
        return importlib.import_module(known[argv[0]]).main(argv[1:])
    codes = [importlib.import_module(module).main(list(argv)) for module in BENCHES.values()]
    return next((code for code in codes if code), 0)


if __name__ == "__main__":
    sys.exit(main())
