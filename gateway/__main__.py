"""`python -m gateway` is the `cortex` command."""

import sys

from gateway.cli import main

sys.exit(main())
