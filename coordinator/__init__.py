"""The anchor's side: a Flower ServerApp that runs federated training across supplier sites,
plus the one-machine simulation harness and the ``sangsaeng`` command line."""
