"""``python -m equipoise`` (and ``torchrun -m equipoise``): the ``equipoise`` command."""

from equipoise.cli import main

raise SystemExit(main())
