"""No models: the layer's tables are Alembic's, not Django's.

The module exists because Django sends post_migrate only to apps that have one, and the
app's handler (see apps.py) is what brings the layer's schema to head on ``migrate``.
"""
