"""Interactive sessions in a project's image: a shell and a Jupyter server."""
