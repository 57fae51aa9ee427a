"""`python -m fluxmpi.cli`: the fluxmpi command (for a checkout that is not pip-installed)."""

from . import main

main()
