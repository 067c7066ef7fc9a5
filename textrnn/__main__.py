"""``python -m textrnn`` (and so ``torchrun -m textrnn``)."""

from textrnn.cli import main

main()
