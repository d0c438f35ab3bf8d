"""`python -m stages <stage> ...`: the entry point dvc.yaml calls."""

from stages import main

main()
