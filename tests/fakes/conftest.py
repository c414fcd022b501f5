"""Makes the Google fake fixtures available to the tests in this folder."""

from __future__ import annotations

from .fixtures import (  # noqa: F401  (imported so pytest registers them here)
    authorized_user_file,
    fast_token_failures,
    google_token,
    http_session,
    instant_token_retries,
    oauth_server,
    service_account,
    service_account_file,
    vertex_server,
)
from .k8s_fixtures import fake_gke, fake_k8s, fake_k8s_tls, k8s_api, k8s_kubeconfig  # noqa: F401
