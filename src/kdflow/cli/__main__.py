"""``python -m kdflow.cli``: the same as the ``kdflow`` command."""

from kdflow.cli import main

main()
