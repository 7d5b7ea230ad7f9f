"""Django integration: imported only by Django projects, it needs Django and Channels."""
