"""Entry point: ``python -m embedder_service [--port 50051] ...``."""

import os

from embedder_service.server import create_server
from embedder_service.settings import EmbedderSettings
from service_kit.server import main

# torch's intra-op threads (GNU OpenMP) spin after each parallel region before they sleep. By
# default they spin long enough to hold the cores the gateway and store need to finish the same
# request (embedsearch up, or pods sharing a node); waiting passively instead makes every one
# of a forward pass's many small regions wake its threads through the kernel. A bounded spin
# keeps the threads warm between the regions of one pass and lets them sleep right after it.
# Measured on 2 cores, text search through the stack, p50 (alternating runs, 2026-11-26):
# passive 21.9 / 25.8 ms, spin bounded at 20,000 21.1 / 20.2 ms; the embedder's own Embed time
# 16.3 / 19.1 ms against 15.1 / 14.2 ms. Read when torch loads, so set before it does; an
# OMP_WAIT_POLICY or GOMP_SPINCOUNT in the environment wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "20000")

if __name__ == "__main__":
    main(EmbedderSettings, create_server)
