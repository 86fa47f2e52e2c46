import os
import signal
import sys

from moonlora.entry import main

# A studio job (`moonlora.studio.jobs`) is stopped by SIGINT, as Ctrl-C stops a run in a terminal. A studio
# started with SIGINT ignored (a background job of a non-interactive shell: `moonlora studio &` in a script)
# would pass that on to its jobs, and Python then installs no KeyboardInterrupt handler: Stop did nothing.
# Jobs run in their own session, out of reach of any terminal's Ctrl-C, so taking SIGINT back is safe there.
if os.environ.pop("MOONLORA_STUDIO_JOB", None) == "1":
    signal.signal(signal.SIGINT, signal.default_int_handler)

sys.exit(main())
