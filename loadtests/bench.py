#!/usr/bin/env python3
"""warmslot load benchmark: warmslot against its peers at equal CPU (``--help`` says how).

The entry point of ``python loadtests/bench.py``; the benchmark itself is the ``peerbench``
package next to it (see its ``__init__``).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # loadtests/: peerbench, events

from peerbench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
