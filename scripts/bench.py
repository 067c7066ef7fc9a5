"""The benchmark suite (the same as `textrnn bench`): training, evaluation and sampling speed and peak memory
per cell, backend and size, each next to a d2l-style loop measured in the same run; corpus loading at 1-100 MB.

    python scripts/bench.py --quick                 # under a minute
    python scripts/bench.py --json bench-cpu.json   # the full suite, under 5 minutes on a 2-core CPU
    python scripts/bench.py --device cuda --json bench-cuda.json
"""

import sys

from textrnn.cli import main

if __name__ == "__main__":
    sys.argv = ["textrnn", "bench", *sys.argv[1:]]
    main()
