"""`python -m gifd.cli`: the same as the `gifd` command."""

from gifd.cli import main

raise SystemExit(main())
