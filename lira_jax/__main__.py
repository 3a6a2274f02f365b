"""`python -m lira_jax <command>`: see lira_jax/cli.py."""
import sys

from lira_jax.cli import main

sys.exit(main())
