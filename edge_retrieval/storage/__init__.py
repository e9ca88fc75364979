"""The SQLite file: gallery, vectors, transfer (export/import), events, outbox."""
