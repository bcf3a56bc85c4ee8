"""`python -m model_builder`."""

import sys

from model_builder.cli import main

sys.exit(main())
