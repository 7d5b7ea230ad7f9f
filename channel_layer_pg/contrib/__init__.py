"""Optional integrations with frameworks; each imported only by the projects that use it."""
