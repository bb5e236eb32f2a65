"""``python -m torchcal``: the command line."""

from torchcal.cli import main

raise SystemExit(main())
