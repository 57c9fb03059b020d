"""What runs inside a job pod: the role watcher and the worker entry point."""
