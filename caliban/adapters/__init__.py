"""I/O adapters: the Docker engine, image builds, the SQLite store, Google APIs."""
