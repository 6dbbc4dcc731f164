import sys

from autotl.cli import main

if __name__ == "__main__":  # decoding worker processes (spawned) import this module too
    sys.exit(main())
