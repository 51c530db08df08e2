"""Video sessions: ingest, journal, checkpoints, session actors."""
