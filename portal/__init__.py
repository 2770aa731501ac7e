"""The web portal: network membership, roles, model releases and auditor access.
Not built yet: see the project's portal issue."""
