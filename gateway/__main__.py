"""Entry point: ``python -m gateway --embedder-addr HOST:PORT --store-addr HOST:PORT``."""

from gateway.server import create_server
from gateway.settings import GatewaySettings
from service_kit.server import main

if __name__ == "__main__":
    main(GatewaySettings, create_server)
