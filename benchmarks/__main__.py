"""``python -m benchmarks [--quick] [--only TOKENS]``: see benchmarks/_runner.py."""

import os
import sys

from ._runner import main

try:
    code = main()
except BrokenPipeError:
    # Whoever read our output stopped (`--list | head`): stop too, without a traceback, and
    # keep the interpreter's final flush of stdout from raising again.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 0
sys.exit(code)
