"""mlpack: compile trained models into parity-checked deployable artifacts.

Importing this package imports no ML framework; heavy imports live inside the
functions that need them so `mlpack validate` and cache hits stay instant.
"""

__version__ = "0.1.0"
