"""Talking to Google Cloud: credentials, one HTTP session, registry pushes.

Shared by the Vertex and GKE backends. Every request goes through
:class:`caliban.adapters.cloud.http.GoogleApi`, which turns google.rpc.Status errors and
connection failures into :class:`caliban.errors.BackendError` with
``retryable``/``retry_after`` set, so the fan-out engine can decide.
"""
