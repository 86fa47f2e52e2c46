import sys

from moonlora.entry import main

sys.exit(main())
