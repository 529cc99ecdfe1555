"""``python -m enclavekit.cli``."""

from enclavekit.cli import main

main()
