"""The demos ``channel-layer-pg demo`` runs: in the terminal (``terminal``) and in a browser (``web``).

Imported only when that command runs: the web demo needs the ``web`` extra.
"""


class DemoError(Exception):
    """The demo could not complete; the message says what went wrong."""
