"""`python -m fer_lab.cli`, as the `fer-lab` command."""

import sys

from fer_lab.cli import main

sys.exit(main())
