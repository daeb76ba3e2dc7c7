"""The embedded backend: the queue kept in this process's memory (`State`), made durable by
an append-only journal with snapshots in the state directory. See backend.py for the
interface it implements and docs/architecture.md for the data path."""
