"""Entry point: ``python -m store_service [--data-root ./data] ...``."""

import os

# numpy's OpenBLAS keeps its threads spinning for 2^28 cycles (about 0.1 s) after every product:
# after each exact search they held a core the embedder needed for the next query's forward pass
# (measured on 2 cores: the store burnt 7.2 s of CPU serving 200 searches in 6.8 s, text search
# through the stack p50 31 ms; 1.0 s and 26 ms with this). 2^4 cycles: idle threads sleep at
# once. Read when numpy loads, so set before it does; an OPENBLAS_THREAD_TIMEOUT given wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from service_kit.server import main
from store_service.server import create_server
from store_service.settings import StoreSettings

if __name__ == "__main__":
    main(StoreSettings, create_server)
