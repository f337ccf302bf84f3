"""Entry point: ``python -m store_service [--data-root ./data] ...``."""

from embedsearch.rpc.server import main
from store_service.server import create_server
from store_service.settings import StoreSettings

if __name__ == "__main__":
    main(StoreSettings, create_server)
