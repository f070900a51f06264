"""The services behind the HTTP layer, one process's worth: the encoder (queue, batching, model runner), the embedding
store and its wire codec, everything-mode jobs, the ONNX decoder files, the gallery, weights and safe image decoding.
``interfaces`` holds the seams (store, encoder, jobs) that ``backend.cluster`` implements with Redis and Ray.

May import: the model packages (``backend.sam``), ``model_export`` and ``backend.runtime``; never ``backend.server``,
``backend.cluster`` or ``backend.config`` (settings are handed in).
"""
