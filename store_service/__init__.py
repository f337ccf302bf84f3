"""store_service: Lance datasets under one root URI, served over gRPC."""
