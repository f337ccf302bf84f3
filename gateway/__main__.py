"""Entry point: ``python -m gateway --embedder-addr HOST:PORT --store-addr HOST:PORT``."""

from embedsearch.rpc.server import main
from gateway.server import create_server
from gateway.settings import GatewaySettings

if __name__ == "__main__":
    main(GatewaySettings, create_server)
