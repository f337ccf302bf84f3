"""Entry point: ``python -m embedder_service [--port 50051] ...``."""

from embedder_service.server import create_server
from embedder_service.settings import EmbedderSettings
from embedsearch.rpc.server import main

if __name__ == "__main__":
    main(EmbedderSettings, create_server)
