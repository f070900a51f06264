"""Text prompts: open-vocabulary detectors that turn a phrase into instance boxes, behind a seam like the encoder's.

May import: ``backend.services``, the model packages and ``backend.runtime``.
"""
