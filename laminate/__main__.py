import sys

from laminate.cli import main

sys.exit(main())
