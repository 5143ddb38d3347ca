#!/usr/bin/env python
"""raydigits launcher: `python launch.py --search-space search_spaces/sgd_vs_adamw.yaml` (see README)."""

from raydigits.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
