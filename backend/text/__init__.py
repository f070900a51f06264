"""Text prompts: open-vocabulary detectors that turn a phrase into instance boxes, behind a seam like the encoder's;
the browser's decoder turns the boxes into masks (the Grounded-SAM recipe; DESIGN "Text prompts").

| module | job |
|---|---|
| ``grounding`` | the seam: ``TextGrounder`` (phrases + pixels -> ``Instance`` boxes), the request's phrases and parameters |
| ``detectors`` | the local ``TextGrounder`` over ``transformers``' zero-shot detectors (Grounding DINO, OWLv2, SAM 3) |
| ``random_detector`` | small seeded random detectors of the same families, built offline from configs |
| ``weights`` | ``SAM_TEXT_MODEL``: a local folder, a hub download (pinned revision), or the random stand-in |
| ``service`` | ``TextService``: loads the grounder once, one detection at a time, answers cached per request |

Everything but ``grounding`` needs the ``.[text]`` extra (``transformers``), imported only when used.

May import: ``backend.services``, the model packages and ``backend.runtime``.
"""
