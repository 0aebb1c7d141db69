"""`python -m deploy.cli ...` is `navit ...`."""

import sys

from deploy.cli import main

sys.exit(main())
