"""The server runtime the three services share: the asyncio gRPC server factory, the
interceptor (auth, validation, deadlines, metrics, error mapping), health, reflection, TLS,
logging, settings, memory tuning, and the ``embedsearch up`` launcher.

It stands on :mod:`embedsearch.contract` and on nothing of the SDK's client side; services
stand on it and never import each other.
"""
