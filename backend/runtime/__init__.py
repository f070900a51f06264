"""The bottom layer, shared by the services and the model packages: files written atomically and locked
(``files``), the encoder's precision paths and CPU capabilities (``encoder_paths``), quoting input in messages
(``quote``), glibc's malloc settings (``heap``).

Imports nothing of ``backend`` and no ML library at import time.
"""
