"""``python -m benchmarks [--quick] [--only TOKENS]``: see benchmarks/_runner.py."""

import sys

from ._runner import main

sys.exit(main())
