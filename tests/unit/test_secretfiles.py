"""Which files the credential rules keep out of the build context, and what the scan flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caliban.core import config as calibanconfig
from caliban.core.dockerignore import DockerIgnore, walk_context
from caliban.core.secretfiles import CredentialRules, credential_file, left_out_text, secret_in
from caliban.errors import CalibanConfigError

PEM = b"-----BEGIN RSA PRIVATE KEY-----\nMIIEow...\n-----END RSA PRIVATE KEY-----\n"
OPENSSH = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
SA_KEY = json.dumps(
    {
        "type": "service_account",
        "project_id": "my-project",
        "private_key_id": "abc",
        "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----\\n",
        "client_email": "x@p.iam.gserviceaccount.com",
    },
    indent=2,
).encode()


@pytest.mark.parametrize(
    ("path", "left_out"),
    [
        ("server.pem", True),
        ("certs/tls.key", True),
        ("id_rsa", True),
        ("deploy/id_ed25519.pub", True),
        ("id_ecdsa", True),
        ("store.p12", True),
        ("store.pfx", True),
        (".env", True),
        ("app/.env.production", True),
        (".ssh/config", True),
        (".aws/credentials", True),
        (".docker/config.json", True),
        (".netrc", True),
        (".pypirc", True),
        (".git-credentials", True),
        (".config/gcloud/credentials.db", True),
        (".kube/config", True),
        (".git/HEAD", True),
        ("vendor/lib/.git", True),
        # Lookalikes stay.
        ("environment.yml", False),
        (".envrc.example.txt", False),
        ("docs/keys.md", False),
        ("train.py", False),
        (".docker/daemon.json", False),
        (".kube/cache/x", False),
        (".gitignore", False),
        ("keyboard.py", False),
    ],
)
def test_name_rules(path: str, left_out: bool) -> None:
    rules = CredentialRules(DockerIgnore())
    assert rules.excluded(path) is left_out


def test_left_out_lists_the_top_folder_once() -> None:
    rules = CredentialRules(DockerIgnore())
    for path in (".git", ".git/HEAD", ".git/objects/ab", ".env", "train.py"):
        rules.excluded(path, is_dir=path in (".git", ".git/objects"))
    assert rules.left_out == [".git/", ".env"]


def test_dockerignore_exclusions_are_not_reported_and_cannot_re_include() -> None:
    rules = CredentialRules(DockerIgnore.parse("*\n!data\n!train.py\n!.env"))
    assert rules.excluded("notes.txt")
    assert not rules.excluded("train.py")
    # "!data" brings the folder back, not the key file inside it; "!.env" neither.
    assert rules.excluded("data/.env")
    assert rules.excluded(".env")
    assert rules.left_out == ["data/.env", ".env"]


def test_include_in_image_names_what_comes_back() -> None:
    rules = CredentialRules(DockerIgnore(), include=[".env.public", ".git", "certs/ca.pem"])
    assert not rules.excluded(".env.public")
    assert rules.excluded(".env")
    assert not rules.excluded(".git", is_dir=True)
    assert not rules.excluded(".git/HEAD")
    assert not rules.excluded("certs/ca.pem")
    assert rules.excluded("certs/server.pem")
    # Including a folder does not include the credentials inside it.
    folder = CredentialRules(DockerIgnore(), include=["data"])
    assert folder.excluded("data/.env")
    assert rules.excluded(".git/hooks/id_rsa")
    assert rules.left_out[-1] == ".git/hooks/id_rsa"
    deep = CredentialRules(DockerIgnore(), include=["**/.env.example"])
    assert not deep.excluded("a/b/.env.example") and deep.excluded("a/b/.env")


def test_walk_prunes_credential_folders_unless_something_inside_is_included(
    tmp_path: Path,
) -> None:
    for rel in (".git/HEAD", ".git/objects/aa/bb", ".aws/credentials", ".aws/config", "a.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    plain = CredentialRules(DockerIgnore())
    assert [r for r, _ in walk_context(tmp_path, ["."], plain)] == ["a.py"]
    assert plain.left_out == [".aws/", ".git/"]
    some = CredentialRules(DockerIgnore(), include=[".aws/config"])
    assert [r for r, _ in walk_context(tmp_path, ["."], some)] == [".aws", ".aws/config", "a.py"]


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (PEM, "private key"),
        (b"\n\n" + OPENSSH, "private key"),
        (b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n", "private key"),
        (b"-----BEGIN EC PRIVATE KEY-----\n", "private key"),
        (SA_KEY, "service-account key"),
        (b'{"type": "authorized_user", "refresh_token": "1//x"}', "Google credentials"),
        (b'{"type": "service_account", "project_id": "p"}', None),
        (b"-----BEGIN CERTIFICATE-----\nMIIB\n", None),
        (b"-----BEGIN PUBLIC KEY-----\nMIIB\n", None),
        (b"print('hi')\n" + PEM, None),
        (b"\0\0\0" + PEM, None),
    ],
)
def test_credential_file(head: bytes, kind: str | None) -> None:
    assert credential_file(head) == kind


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b'KEY = """\n' + PEM + b'"""\n', "private key"),
        (b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n" + PEM, "private key"),
        (b"x = " + SA_KEY, "service-account key"),
        (b"-----BEGIN CERTIFICATE-----\nMIIB\n", None),
        (b"the words private key and service_account, nothing else", None),
        (b"\x89PNG\r\n\x1a\n\0\0" + PEM, None),
    ],
)
def test_secret_in(head: bytes, kind: str | None) -> None:
    assert secret_in(head) == kind


def test_left_out_text_is_one_line_and_bounded() -> None:
    text = left_out_text([".env", ".git/", "key.json"])
    assert text.startswith("left out of the image: .env, .git/, key.json (credentials; see ")
    many = left_out_text([f"k{i}.pem" for i in range(20)])
    assert "and 12 more" in many and "\n" not in many


def test_calibanconfig_include_in_image() -> None:
    cfg = calibanconfig.from_mapping({"include_in_image": [".env.public", " certs/*.pem "]})
    assert cfg.include_in_image == (".env.public", "certs/*.pem")
    assert calibanconfig.from_mapping({}).include_in_image == ()
    for bad, message in (
        (".env", "must be a list"),
        ([""], "must not be empty"),
        ([3], "must be a string"),
        (["!x"], "starts with '!'"),
        (["[a"], "not a valid pattern"),
    ):
        with pytest.raises(CalibanConfigError, match=message):
            calibanconfig.from_mapping({"include_in_image": bad})
