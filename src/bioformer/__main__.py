"""`python -m bioformer ...` (what `torchrun -m bioformer train ...` runs on every rank)."""

import sys

from bioformer.cli import main

sys.exit(main())
