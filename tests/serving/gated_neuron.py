"""``python -m tests.serving.gated_neuron``: the real neuron with two test hooks, driven by files in
``$CORTEX_TEST_GATE_DIR``, so a test can pin down an interleaving instead of hoping for it.

* ``ModelLoader.prepare`` of model ``ID`` touches ``preparing-ID`` and then waits while ``hold-ID`` exists.
* ``Registry.acquire`` touches ``acquire-ID`` right before deciding (in the same event-loop step), so the test
  knows a request has reached admission.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from serving.model_host import ModelLoader
from serving.neuron import main
from serving.registry import Registry

GATE = Path(os.environ["CORTEX_TEST_GATE_DIR"])
HOLD_LIMIT_S = 120.0  # a test that forgets to release its hold cannot wedge the neuron for ever
_prepare, _acquire = ModelLoader.prepare, Registry.acquire


def held_prepare(self, source, tp=1, dp=1):
    hold = GATE / f"hold-{source.id}"
    if hold.exists():
        (GATE / f"preparing-{source.id}").touch()
        deadline = time.monotonic() + HOLD_LIMIT_S
        while hold.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return _prepare(self, source, tp, dp)


async def marked_acquire(self, model_id):
    (GATE / f"acquire-{model_id}").touch()
    return await _acquire(self, model_id)


ModelLoader.prepare = held_prepare
Registry.acquire = marked_acquire

if __name__ == "__main__":
    sys.exit(main())
