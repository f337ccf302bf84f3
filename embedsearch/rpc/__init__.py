"""gRPC plumbing shared by the services and the SDK: status mapping, server runtime, settings."""
