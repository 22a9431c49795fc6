"""`python -m eaglex.cli`."""

from eaglex.__main__ import main

main()
