"""Everything ``SAM2API`` runs (CPU, many worker processes): the routes' pipelines, their fields, and the
HTTP edge. Never imports torch, nor ``sam2_api.model`` (tests/unit/test_layout.py)."""
