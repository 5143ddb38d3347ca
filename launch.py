#!/usr/bin/env python
"""raydigits launcher: `python launch.py --search-space search_spaces/sgd_vs_adamw.yaml` (see README)."""

import sys

try:
    from raydigits.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python imports: one line and 130, like any other moment
    print("\ninterrupted", file=sys.stderr)
    raise SystemExit(130) from None

if __name__ == "__main__":
    raise SystemExit(main())
