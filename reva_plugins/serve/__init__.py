"""``reva-plugins serve``: the configured services as CS3 gRPC services (the ``serve`` extra).

Imported only by the ``serve``, ``status`` and ``reload`` commands, so the core never imports
grpc. :class:`reva_plugins.serve._server.Server` is the server.
"""
