import sys

from detgen.cli import main

sys.exit(main())
