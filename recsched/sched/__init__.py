"""Pure scheduling policies: request level, operator level, tuner, online retuner.

`CHECKS`: whether policies assert their invariants at the end of every step (on by default;
`RECSCHED_CHECKS=0` or `python -O` turns them off for long simulations).
"""

import os

CHECKS: bool = __debug__ and os.environ.get("RECSCHED_CHECKS", "1") != "0"
