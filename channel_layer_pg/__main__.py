"""``python -m channel_layer_pg``: the same as the ``channel-layer-pg`` command."""

from channel_layer_pg.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
