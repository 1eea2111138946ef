"""Test package (lets tests/unit and tests/integration hold modules of the same name)."""
