import sys

from marseval.cli import main

sys.exit(main())
