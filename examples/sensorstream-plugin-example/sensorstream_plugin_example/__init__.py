"""An example sensorstream plugin; the entry point names ``.plugin``, the worker's part.

The package itself stays free of imports, so ``.stats`` (plain logic) imports without
a worker.
"""
