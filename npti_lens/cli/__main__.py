"""`python -m npti_lens.cli`: the same as `npti`."""

import sys

from npti_lens.cli import main

sys.exit(main())
