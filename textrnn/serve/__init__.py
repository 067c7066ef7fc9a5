"""``textrnn serve``: request parsing (``request``), the continuous-batching engine (``engine``) and the HTTP
application (``app``).
"""
