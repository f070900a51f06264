"""Scale-out past one process (docs/deploy.md): the Redis embedding/job store, the Ray Serve encoder, everything-mode
jobs on a Ray cluster and batch labelling on Ray Data. Each plugs into a seam of ``backend.services.interfaces``.

May import: ``backend.config``, ``backend.text``, ``backend.services``, the model packages and ``backend.runtime``.
Imported by ``backend.server``, ``backend.integrations`` and the command line.
"""
