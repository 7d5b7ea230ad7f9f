"""What every workload shares: layers (layers.py), PostgreSQL probes and the run header (db.py),
worker processes, /proc meters and timing (procs.py), and the table printer (table.py)."""
