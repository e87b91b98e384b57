"""Launched by tests/test_launch.py under `accelerate launch` with 2 CPU processes: each worker writes its pid
to DIR/<rank>.pid, then waits for ever (a hang, made explicit rather than left to chance).

    accelerate launch --multi_gpu --num_processes 2 tests/dist_hang_script.py DIR
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

Path(sys.argv[1], f"{os.environ['RANK']}.pid").write_text(str(os.getpid()))
threading.Event().wait()
