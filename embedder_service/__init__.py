"""embedder_service: the registry of embedding providers, serving batched inference over gRPC."""
