"""pytest set-up: the shared helpers and fixtures live in helpers.py (one module, for
fixtures and for ``from helpers import ...`` alike), never imported from here."""

pytest_plugins = ["helpers"]
