"""Where the nanoBragg golden images are: ``../shared/golden/diffraction`` beside the checkout.

``EQUIPOISE_GOLDEN`` overrides the location. Tests that need a case skip with a message naming the
path when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN = Path(os.environ.get("EQUIPOISE_GOLDEN",
                             Path(__file__).resolve().parents[3] / "shared" / "golden" / "diffraction"))
