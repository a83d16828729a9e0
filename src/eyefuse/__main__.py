"""`python -m eyefuse ...` (also what `torchrun -m eyefuse train ...` runs)."""

from eyefuse.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
