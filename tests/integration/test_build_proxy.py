"""Builds behind a TLS-inspecting gateway: a private index signed by a CA of the test's own.

The index is a PEP 503 ``simple/`` tree served over HTTPS on the Docker bridge's
gateway address, which build containers reach without host networking. The
build must install from it with ``build_env.ca_bundle``, and neither the CA nor
the index URL may be left in any layer, the config or the history of the image.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import io
import ipaddress
import json
import ssl
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from caliban import events as ev
from caliban.errors import BuildError
from caliban.options import ProjectOptions
from caliban.session import Session
from tests.conftest import MakeProject, docker_cli
from tests.fakes.k8s_tls import make_certificates

pytestmark = [pytest.mark.docker]

PROBE = "caliban-proxy-probe"
VALUE = "installed-from-the-private-index"


@dataclass
class Index:
    url: str
    ca_pem: bytes
    ca_path: Path
    downloads: list[str]


def _gateway() -> str:
    """The host's address on the default bridge (docker0), where build containers look."""
    ipam = json.loads(docker_cli("network", "inspect", "bridge", "-f", "{{json .IPAM.Config}}"))
    first = ipam[0]
    # The daemon omits Gateway when it picked the default: the subnet's first host.
    return str(first.get("Gateway") or next(ipaddress.ip_network(first["Subnet"]).hosts()))


def _certificates(ip: str, folder: Path) -> tuple[bytes, Path, Path]:
    """The gateway's own CA (PEM) and the files of a server certificate for ``ip`` it signed."""
    bundle = make_certificates(hosts=(ip,), common_name="caliban test gateway CA")
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_text(bundle.cert_pem)
    key_path.write_text(bundle.key_pem)
    return bundle.ca_cert_pem.encode(), cert_path, key_path


def _wheel(folder: Path) -> Path:
    """A two-file pure-Python wheel, written by hand."""
    dist = "caliban_proxy_probe-1.0"
    files = {
        "caliban_proxy_probe/__init__.py": f"VALUE = {VALUE!r}\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {PROBE}\nVersion: 1.0\n",
        f"{dist}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: caliban-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = "\n".join(record) + "\n"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


@pytest.fixture
def private_index(tmp_path: Path, docker_engine: None) -> Iterator[Index]:
    ip = _gateway()
    root = tmp_path / "index"
    page = root / "simple" / PROBE
    page.mkdir(parents=True)
    wheel = _wheel(page)
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (page / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="{wheel.name}#sha256={sha}">{wheel.name}</a>'
        "</body></html>\n"
    )
    (root / "simple" / "index.html").write_text(f'<a href="{PROBE}/">{PROBE}</a>\n')
    ca_pem, cert, key = _certificates(ip, tmp_path)
    ca_path = tmp_path / "gateway-ca.pem"  # outside the project folder, as a host file
    ca_path.write_bytes(ca_pem)
    downloads: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            downloads.append(self.path)

    server = http.server.ThreadingHTTPServer(
        (ip, 0), functools.partial(Handler, directory=str(root))
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Index(f"https://{ip}:{server.server_address[1]}/simple/", ca_pem, ca_path, downloads)
    finally:
        server.shutdown()
        server.server_close()


def _project(make_project: MakeProject, build_env: dict[str, object]) -> Path:
    return make_project(
        {
            "requirements.txt": f"{PROBE}==1.0\n",
            ".calibanconfig.json": json.dumps({"default_mode": "cpu", "build_env": build_env}),
        }
    )


def _saved_image(tag: str, folder: Path) -> tuple[list[bytes], bytes]:
    """The layer tars and the config JSON of an image, as ``docker save`` exports them."""
    path = folder / "image.tar"
    docker_cli("save", "-o", str(path), tag)
    layers: list[bytes] = []
    with tarfile.open(path) as outer:
        manifest = json.loads(outer.extractfile("manifest.json").read())  # type: ignore[union-attr]
        (entry,) = manifest
        config = outer.extractfile(entry["Config"]).read()  # type: ignore[union-attr]
        for name in entry["Layers"]:
            layers.append(outer.extractfile(name).read())  # type: ignore[union-attr]
    return layers, config


def _holding(layer: bytes, needle: bytes) -> list[str]:
    """Names of the files in a layer tar that hold ``needle``, to say where a leak is."""
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        return [
            m.name
            for m in tar.getmembers()
            if m.isreg() and needle in tar.extractfile(m).read()  # type: ignore[union-attr]
        ]


def _pem_body(pem: bytes) -> list[bytes]:
    """The base64 lines of a PEM: what a copy of the file would contain, whatever its name."""
    return [line for line in pem.splitlines() if line and not line.startswith(b"-----")]


async def test_private_index_and_ca_are_used_but_never_left_in_the_image(
    session: Session, make_project: MakeProject, private_index: Index, tmp_path: Path
) -> None:
    folder = _project(
        make_project,
        {
            "index_url": private_index.url,
            "ca_bundle": str(private_index.ca_path),
            # Proxies reach the build (NO_PROXY lets pip reach the index directly)...
            "https_proxy": "http://proxy.invalid:3128",
            "no_proxy": private_index.url.split("/")[2].split(":")[0],
        },
    )
    built = await session.build(ProjectOptions(folder=folder, entry="job.py"))
    assert not built.skipped
    assert any(p.endswith(".whl") for p in private_index.downloads), private_index.downloads
    out = docker_cli(
        "run", "--rm", "--entrypoint", "python3", built.tag, "-c",
        "import caliban_proxy_probe as p; print(p.VALUE)",
    )  # fmt: skip
    assert out.strip() == VALUE

    layers, config = _saved_image(built.tag, tmp_path)
    assert layers
    # The search can find what is there: the installed package is in a layer.
    assert any(VALUE.encode() in layer for layer in layers)
    needles = [private_index.ca_pem, *_pem_body(private_index.ca_pem)]
    settings = [private_index.url.encode(), b"proxy.invalid"]
    for layer in layers:
        for needle in needles:
            assert needle not in layer, (_holding(layer, needle), needle)
        # The settings are in no file but the project's own config, which `COPY .`
        # ships like any project file (the docs say where a token belongs instead).
        for needle in settings:
            if needle in layer:
                assert _holding(layer, needle) == ["usr/app/.calibanconfig.json"], needle
    for needle in [*needles, *settings, b"PIP_CERT", b"PIP_INDEX_URL", b"CALIBAN_CA_"]:
        assert needle not in config, needle
    env = json.loads(docker_cli("image", "inspect", "-f", "{{json .Config.Env}}", built.tag))
    assert not [e for e in env if e.split("=")[0].upper().endswith(("PROXY", "CERT", "BUNDLE"))]


async def test_without_the_ca_the_build_fails_naming_the_certificate(
    session: Session, make_project: MakeProject, private_index: Index
) -> None:
    folder = _project(make_project, {"index_url": private_index.url})
    with pytest.raises(BuildError) as caught:
        await session.build(ProjectOptions(folder=folder, entry="job.py"))
    message = str(caught.value)
    assert "CERTIFICATE_VERIFY_FAILED" in message and "build_env.ca_bundle" in message


async def test_proxy_settings_reach_pip(
    session: Session, make_project: MakeProject, private_index: Index
) -> None:
    # Without NO_PROXY, pip must go through the (unreachable) proxy and fail.
    folder = _project(
        make_project,
        {
            "index_url": private_index.url,
            "ca_bundle": str(private_index.ca_path),
            "https_proxy": "http://127.0.0.1:9",
        },
    )
    logs: list[str] = []
    session.sink = lambda e: logs.append(e.line) if isinstance(e, ev.BuildLog) else None
    with pytest.raises(BuildError) as caught:
        await session.build(ProjectOptions(folder=folder, entry="job.py"))
    assert "pip install" in str(caught.value)
    assert any("ProxyError" in line or "proxy" in line.lower() for line in logs), logs[-20:]
    assert not any(p.endswith(".whl") for p in private_index.downloads)


async def test_a_ca_kept_in_the_project_folder_stays_out_of_the_image(
    session: Session, make_project: MakeProject, private_index: Index, tmp_path: Path
) -> None:
    folder = _project(make_project, {"index_url": private_index.url, "ca_bundle": "certs/ca.pem"})
    (folder / "certs").mkdir()
    (folder / "certs" / "ca.pem").write_bytes(private_index.ca_pem)
    built = await session.build(ProjectOptions(folder=folder, entry="job.py"))
    assert any(p.endswith(".whl") for p in private_index.downloads)
    layers, _ = _saved_image(built.tag, tmp_path)
    assert any(VALUE.encode() in layer for layer in layers)
    for layer in layers:
        for needle in [private_index.ca_pem, *_pem_body(private_index.ca_pem)]:
            assert needle not in layer, (_holding(layer, needle), needle)
