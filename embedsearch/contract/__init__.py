"""What the SDK and the services share, and nothing else: typed errors, the Arrow wire format,
table schemas and their bindings, SQL quoting, proto conversions, channel helpers, and the
embedding-function base classes and registry. The generated stubs sit beside it in
``embedsearch.v1``.

Modules here import neither the client side of ``embedsearch`` nor any service
(``tests/test_layers.py`` checks it), so both sides can stand on them.
"""
