"""Segment Anything web app: the Flask backend and the SAM model (``backend.sam``)."""

import os

# Idle OpenMP threads otherwise spin between the encoder's many small operations; on a machine shared with
# other work that halved encoder throughput (tests/benchmarks/bench_encoder.py). Must precede importing torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
