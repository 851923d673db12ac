import sys

from ttsbench.cli import main

sys.exit(main())
