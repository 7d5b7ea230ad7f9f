"""One module per workload family; each module's docstring says what it measures, how, and in what unit.

The comparison table (``bench.py`` without a subcommand) runs ``latency``, ``local``,
``fanout``, ``cross_process``, ``other_process`` and ``sync`` against every layer, with
``floors`` in its header; the others are subcommands of ``bench.py`` that measure channel_layer_pg alone.
"""
