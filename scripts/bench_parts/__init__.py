"""The parts of scripts/bench.py, one module per part; `python scripts/bench.py` is the command (see its
docstring): common (timing, the monitor's own time, worker processes), trainer_arms (the default run: the real
trainer in every arm, peak memory, audit), loops (in-process training loops), scaling (--scaling) and gpu
(--gpu, --gpu --alone)."""
