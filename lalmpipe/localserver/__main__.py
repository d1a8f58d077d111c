"""python -m lalmpipe.localserver: the command line of lalmpipe.localserver.command."""
import sys

from .command import main

sys.exit(main())
