"""Segment Anything web app: the Flask backend and the SAM model (``backend.sam``)."""
