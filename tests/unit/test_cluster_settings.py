"""Which cluster and key `caliban cluster` uses when the user file names them."""

from __future__ import annotations

import pytest

from caliban.core.userconfig import UserConfig
from caliban.errors import ValidationError
from caliban.options import ClusterOptions
from caliban.platforms.kubernetes.admin import key_file, uses_kubeconfig

KUBE_USER = UserConfig({"kubeconfig": "/home/u/lab.yaml"}, "/u/config.json")
CONTEXT_USER = UserConfig({"kube_context": "lab"}, "/u/config.json")


@pytest.mark.parametrize(
    ("opts", "environ", "user", "expected"),
    [
        (ClusterOptions(), {}, None, False),
        (ClusterOptions(), {}, UserConfig(), False),
        (ClusterOptions(), {"KUBECONFIG": "/k"}, None, True),
        (ClusterOptions(), {}, KUBE_USER, True),
        (ClusterOptions(), {}, CONTEXT_USER, True),
        # A named GKE cluster beats a standing kubeconfig choice.
        (ClusterOptions(cluster_name="c1"), {}, KUBE_USER, False),
        (ClusterOptions(cluster_name="c1"), {"KUBECONFIG": "/k"}, None, False),
        (ClusterOptions(kubeconfig="/k"), {}, None, True),
    ],
)
def test_uses_kubeconfig(
    opts: ClusterOptions, environ: dict[str, str], user: UserConfig | None, expected: bool
) -> None:
    assert uses_kubeconfig(opts, environ, user) is expected


def test_named_gke_cluster_and_kubeconfig_flag_conflict() -> None:
    with pytest.raises(ValidationError, match="pass one or the other"):
        uses_kubeconfig(ClusterOptions(cluster_name="c1", context="x"), {}, KUBE_USER)


def test_key_file_flag_then_env_then_user_file() -> None:
    user = UserConfig({"gcloud.cloud_key": "/keys/user.json"}, "/u/config.json")
    env = {"GOOGLE_APPLICATION_CREDENTIALS": "/keys/env.json"}
    assert key_file(ClusterOptions(cloud_key="/keys/flag.json"), env, user) == "/keys/flag.json"
    assert key_file(ClusterOptions(), env, user) == "/keys/env.json"
    assert key_file(ClusterOptions(), {}, user) == "/keys/user.json"
    assert key_file(ClusterOptions(), {}, None) is None
