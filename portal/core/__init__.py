"""Configuration, database, errors and security primitives of the portal."""
