"""`python -m builder` runs the command-line interface."""

from builder.cli import main

main()
