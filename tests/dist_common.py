"""What every tests/dist_*_script.py does around its work under `accelerate launch` (CPU, gloo).

- `watchdog()`, first: a process still running after `HANG_AFTER_S` prints every thread's stack and exits, so a
  hang fails its test with the place it hung instead of waiting for the launcher's timeout.
- `finish(acc)`, last, after the script has dropped its own references to prepared (DDP) models: waits for
  every process, frees what the accelerator still holds (`trainer.release`: a DDP model alive at process-group
  teardown made 2-process CPU runs hang at exit now and then), and ends the process group."""

from __future__ import annotations

import faulthandler

from reviveformer.trainer import release

HANG_AFTER_S = 120


def watchdog() -> None:
    faulthandler.dump_traceback_later(HANG_AFTER_S, exit=True)


def finish(acc) -> None:
    acc.wait_for_everyone()
    release(acc)
    acc.end_training()
