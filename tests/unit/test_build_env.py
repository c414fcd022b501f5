"""``build_env``: validation, the builder stage it adds, and reading the CA bundle."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from caliban.adapters.build import pip_source, read_ca_bundle
from caliban.core import config as cc
from caliban.core.dockerfile import DEPS_ROOT, DEPS_STAGE, BuildSpec, ImageUser, PipSource, render
from caliban.errors import CalibanConfigError
from caliban.spec import EntryKind, Entrypoint, JobMode

ALICE = ImageUser(1000, 1000, "alice")
ENTRY = Entrypoint(EntryKind.SCRIPT, "job.py", ".")
CA = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def _spec(**kw: object) -> BuildSpec:
    base: dict[str, object] = {
        "base_image": "python:3.11-slim",
        "user": ALICE,
        "mode": JobMode.CPU,
        "requirements": True,
        "entry": ENTRY,
    }
    base.update(kw)
    return BuildSpec(**base)  # type: ignore[arg-type]


def test_build_env_is_validated_into_a_dataclass() -> None:
    cfg = cc.from_mapping(
        {
            "build_env": {
                "index_url": "https://pypi.corp.example/simple/",
                "extra_index_urls": "https://extra.example/simple",
                "ca_bundle": " ~/corp-ca.pem ",
                "http_proxy": "http://proxy.corp:3128",
                "https_proxy": "http://user:pw@proxy.corp:3128",
                "no_proxy": "localhost, .corp",
            }
        }
    )
    env = cfg.build_env
    assert env.extra_index_urls == ("https://extra.example/simple",)
    assert env.ca_bundle == "~/corp-ca.pem"
    assert env.proxies() == {
        "HTTP_PROXY": "http://proxy.corp:3128",
        "http_proxy": "http://proxy.corp:3128",
        "HTTPS_PROXY": "http://user:pw@proxy.corp:3128",
        "https_proxy": "http://user:pw@proxy.corp:3128",
        "NO_PROXY": "localhost,.corp",
        "no_proxy": "localhost,.corp",
    }
    assert "pw@" not in repr(cfg)
    assert cc.from_mapping({}).build_env == cc.BuildEnv()
    assert cc.build_env_from_mapping({}, "user config") == cc.BuildEnv()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"index": "x"}, "unknown key 'index' in 'build_env'; did you mean 'index_url'?"),
        ({"index_url": "pypi.corp/simple"}, "'build_env.index_url' must be a URL"),
        ({"index_url": "ftp://pypi.corp/simple"}, "'build_env.index_url' must be a URL"),
        ({"index_url": "https://u:pw@"}, "'build_env.index_url' must be a URL"),
        ({"index_url": "https://h:port/"}, "'build_env.index_url' is not a valid URL"),
        ({"index_url": "https://a b/"}, "'build_env.index_url' must be a URL"),
        ({"extra_index_urls": [1]}, "'build_env.extra_index_urls' must be a string"),
        ({"extra_index_urls": {}}, "'build_env.extra_index_urls' must be a list"),
        ({"https_proxy": "proxy:3128"}, "'build_env.https_proxy' must be a URL"),
        ({"no_proxy": "a,\nb"}, "'build_env.no_proxy' must be one line"),
        ({"ca_bundle": ""}, "'build_env.ca_bundle' must not be empty"),
        ({"ca_bundle": 3}, "'build_env.ca_bundle' must be a string"),
    ],
)
def test_bad_build_env_gets_one_line(data: dict[str, object], message: str) -> None:
    with pytest.raises(CalibanConfigError) as caught:
        cc.from_mapping({"build_env": data})
    assert message in caught.value.message
    assert "\n" not in caught.value.message
    # A URL may hold a password: the message never repeats it.
    for value in data.values():
        if isinstance(value, str) and "://" in value:
            assert value not in caught.value.message


def test_without_pip_settings_the_dockerfile_is_unchanged() -> None:
    plain = render(_spec())
    assert render(_spec(proxies=(("HTTPS_PROXY", "http://p:1"),))) == plain
    assert DEPS_STAGE not in plain and plain.count("FROM ") == 1


def test_pip_settings_move_pip_into_a_builder_stage() -> None:
    pip = PipSource("https://idx/simple", ("https://x/simple",), CA)
    text = render(_spec(setup_py=True, extras=("cpu",), pip=pip))
    deps, final = text.split("\nFROM python:3.11-slim\n")
    assert f"FROM python:3.11-slim AS {DEPS_STAGE}" in deps
    assert "ARG PIP_INDEX_URL" in deps and "ARG CALIBAN_CA_0" in deps
    assert f"pip install --root {DEPS_ROOT} '.[cpu]' -r requirements.txt" in deps
    assert "PIP_CERT=/tmp/caliban-ca.pem" in deps
    assert "pip install" not in final and "ARG" not in final and "CERT" not in final
    assert f"COPY --from={DEPS_STAGE} {DEPS_ROOT}/ /" in final
    # The same system layers in both stages, so the daemon caches them once.
    assert deps.split("USER root", 1)[1].split("WORKDIR")[0] in final
    # Settings never appear in the Dockerfile (the daemon echoes it in the build log).
    assert "idx" not in text and "MIIB" not in text


def test_the_tag_follows_pip_settings_but_not_proxies() -> None:
    base = PipSource("https://idx/simple", (), CA)
    texts = {
        render(_spec(pip=p))
        for p in (base, PipSource("https://other/simple", (), CA), PipSource(None, (), CA + CA))
    }
    assert len(texts) == 3
    proxied = _spec(pip=base, proxies=(("HTTP_PROXY", "http://p:1"),))
    assert render(proxied) == render(_spec(pip=base))
    assert proxied.build_args() == {
        "HTTP_PROXY": "http://p:1",
        "PIP_INDEX_URL": "https://idx/simple",
        "CALIBAN_CA_0": CA,
    }


def test_a_big_bundle_is_split_below_the_kernel_limit_per_variable() -> None:
    pem = CA * 5000  # ~300 KB, like a whole system bundle
    pip = PipSource(None, (), pem)
    args = pip.build_args()
    assert len(args) > 2 and all(len(v.encode()) < 128 * 1024 for v in args.values())
    assert "".join(args[f"CALIBAN_CA_{i}"] for i in range(len(args))) == pem
    text = render(_spec(pip=pip))
    assert all(f'"$CALIBAN_CA_{i}"' in text for i in range(len(args)))


def test_nothing_to_install_needs_no_builder_stage() -> None:
    spec = _spec(requirements=False, pip=PipSource("https://idx/simple"))
    assert DEPS_STAGE not in render(spec) and spec.build_args() == {}


def _real_ca() -> str:
    # Any certificate OpenSSL accepts will do; the system store has plenty.
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            text = Path(candidate).read_text()
            return text[: text.index("-----END CERTIFICATE-----") + 26]
    pytest.skip("no system CA bundle to borrow a certificate from")


def test_read_ca_bundle(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(_real_ca())
    assert read_ca_bundle(tmp_path, "ca.pem").startswith("-----BEGIN CERTIFICATE-----")
    env = cc.BuildEnv(ca_bundle=str(tmp_path / "ca.pem"))
    got = pip_source(Path("/nonexistent"), env)
    assert got is not None and got.ca_pem == _real_ca() and got.index_url is None
    assert pip_source(tmp_path, cc.BuildEnv(https_proxy="http://p:1")) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read it: No such file or directory"),
        (b"not a certificate\n", "is not a PEM file of CA certificates"),
        (CA.encode(), "is not a PEM file of CA certificates"),
        (b"\x30\x82\x01\x0a\xff", "is not a PEM file of CA certificates"),
        (json.dumps({"type": "service_account"}).encode(), "is not a PEM file"),
    ],
)
def test_bad_ca_bundle_gets_one_line(tmp_path: Path, content: bytes | None, message: str) -> None:
    if content is not None:
        (tmp_path / "ca.pem").write_bytes(content)
    with pytest.raises(CalibanConfigError) as caught:
        read_ca_bundle(tmp_path, "ca.pem")
    assert message in caught.value.message and "'ca.pem'" in caught.value.message
    assert "\n" not in caught.value.message
