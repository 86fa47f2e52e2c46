import sys

from moonlora.cli import main

sys.exit(main())
