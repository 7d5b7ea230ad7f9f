"""Testing support: the pytest plugin (``pytest_plugin``) and the servers its fixtures start."""
