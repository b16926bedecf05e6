"""``python -m serving`` is the same as ``python -m serving.neuron``."""

import sys

from serving.neuron import main

sys.exit(main())
