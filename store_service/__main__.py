"""Entry point: ``python -m store_service [--data-root ./data] ...``."""

from embedsearch.rpc.server import main
from store_service.memory import return_large_blocks_to_the_system
from store_service.server import create_server
from store_service.settings import StoreSettings

if __name__ == "__main__":
    return_large_blocks_to_the_system()
    main(StoreSettings, create_server)
