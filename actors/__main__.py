"""``python -m actors``: the ``spider`` command line, for a checkout that is not installed."""

from actors.tools.cli import main

raise SystemExit(main())
