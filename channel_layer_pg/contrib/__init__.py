"""Integrations with frameworks, each imported only by applications that use it."""
