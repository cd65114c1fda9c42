"""Helpers shared by the tests. Import them from here (``from support.<module> import ...``), never from
another test module; ``conftest.py`` holds only fixtures."""
