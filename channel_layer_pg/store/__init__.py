"""Everything that touches PostgreSQL: tables, statements, connections, LISTEN and claims."""
