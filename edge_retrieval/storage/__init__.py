"""The SQLite file: database (opening, ladders), gallery (+ schema), vectors, transfer (export/import), events, outbox."""
