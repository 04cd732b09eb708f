"""`python -m bioformer.cli ...` (the same as `python -m bioformer ...`)."""

import sys

from bioformer.cli import main

sys.exit(main())
