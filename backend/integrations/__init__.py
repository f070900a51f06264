"""Adapters for the annotation tools people already run (Label Studio, CVAT, ...): one module per tool, each a
blueprint that translates the tool's protocol onto the same encoder, embedding store and decoder as the page.

May import: ``backend.config``, ``backend.cluster``, ``backend.text``, ``backend.services``, the model packages and
``backend.runtime``. Imported only by ``backend.server``.
"""
