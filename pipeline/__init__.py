"""forgeflow's library: stages, the spec, the artifact store and tracking.

This package never imports prefect; the Prefect layer lives in ``flows/``.
"""

__version__ = "0.1.0"
