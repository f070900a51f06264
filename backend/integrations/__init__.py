"""Annotation tools' own SAM protocols, one module (a Flask blueprint) per tool, so that pointing a tool's
existing SAM integration at this server works with no change on the tool's side (docs/integrations.md):

- ``label_studio``: Label Studio's ML backend at ``/label-studio`` (always on);
- ``cvat``: CVAT's SAM interactor through nuclio's dashboard API at ``/api/functions...`` (``SAM_CVAT=1``);
- ``roboflow``: Roboflow Inference's SAM 2 routes at ``/sam2/...`` (``SAM_ROBOFLOW=1``).

They translate onto ``toolkit``: the page's image decoding, encoder and embedding cache, and a server-side
decode with ``SamPredictor``.

May import: ``backend.config``, ``backend.cluster``, ``backend.text``, ``backend.services``, the model packages and
``backend.runtime``. Imported only by ``backend.server``.
"""

from __future__ import annotations

from flask import Flask

from .toolkit import EXTENSION, Grounder, Toolkit


def register_integrations(app: Flask, kit: Toolkit) -> None:
    """Registers the enabled tools' blueprints on ``app`` with the services in ``kit``."""
    from .cvat import cvat
    from .label_studio import label_studio
    from .roboflow import roboflow

    app.extensions[EXTENSION] = kit
    app.register_blueprint(label_studio)
    if kit.config.cvat:
        app.register_blueprint(cvat)
    if kit.config.roboflow:
        app.register_blueprint(roboflow)


__all__ = ["Grounder", "Toolkit", "register_integrations"]
