"""`python -m memwatch` is the `memwatch` command."""

from memwatch.cli import main

raise SystemExit(main())
