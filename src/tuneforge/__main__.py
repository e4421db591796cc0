"""`python -m tuneforge ...` (also `torchrun ... -m tuneforge train ...`): the command line."""
from .cli import main

raise SystemExit(main())
