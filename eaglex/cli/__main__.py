"""`python -m eaglex.cli`."""

from eaglex.cli import main

main()
