import sys

from autotl.cli import main

sys.exit(main())
