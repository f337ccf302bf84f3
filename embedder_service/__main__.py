"""Entry point: ``python -m embedder_service [--port 50051] ...``."""

import os

from embedder_service.server import create_server
from embedder_service.settings import EmbedderSettings
from service_kit.server import main

# OpenMP's threads (torch's intra-op pool) spin for a while after every forward pass, holding
# the cores the gateway and store need to finish the same request (embedsearch up, or pods
# sharing a node) and burning a container's CPU quota. Measured on 2 cores: text search through
# the stack p50 51 ms spinning, 33 ms passive. Read when torch loads, so set before it does;
# an OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if __name__ == "__main__":
    main(EmbedderSettings, create_server)
