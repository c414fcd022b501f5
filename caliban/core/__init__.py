"""Pure logic: standard library only, no I/O library (a test checks it)."""
