"""``python -m sangsaeng``: the same as the ``sangsaeng`` command."""

from sangsaeng.cli import main

main()
