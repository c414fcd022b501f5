"""Credentials stay out of images: a real build of a folder full of them, the notice,
re-inclusion, and the refusal to push an image that would carry a key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caliban import events as ev
from caliban.errors import ConfigError
from caliban.options import ClusterJobRequest, ClusterOptions, ProjectOptions
from caliban.session import Session
from tests.conftest import MakeProject, docker_cli
from tests.fakes.k8s import FakeKubernetes
from tests.fakes.vertex import FakeVertex
from tests.integration.cloud_helpers import caliban, cli_env

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"
OPENSSH = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
SA_KEY = json.dumps(
    {
        "type": "service_account",
        "project_id": "my-project",
        "private_key": PEM,
        "client_email": "trainer@p.iam.gserviceaccount.com",
    }
)

# Every credential the issue lists, at the top and deeper down.
CREDENTIALS = {
    ".env": "DB_PASSWORD=hunter2\n",
    ".env.local": "TOKEN=x\n",
    "id_rsa": OPENSSH,
    "id_rsa.pub": "ssh-rsa AAAA me@host\n",
    "id_ed25519": OPENSSH,
    "id_ecdsa": OPENSSH,
    "server.pem": PEM,
    "tls.key": PEM,
    "store.p12": "binary-ish",
    "store.pfx": "binary-ish",
    "keys/trainer.json": SA_KEY,  # a service-account key under an innocent name
    "deploy_key": PEM,  # a key file under an innocent name
    "creds/token.txt": "opaque token\n",  # named by GOOGLE_APPLICATION_CREDENTIALS
    ".git/HEAD": "ref: refs/heads/main\n",
    ".git/config": "[remote]\n url = https://user:pw@example.com/x\n",
    ".aws/credentials": "[default]\naws_secret_access_key = x\n",
    ".docker/config.json": '{"auths": {"r": {"auth": "dXNlcjpwdw=="}}}',
    ".netrc": "machine x login me password pw\n",
    ".pypirc": "[pypi]\npassword = pw\n",
    ".git-credentials": "https://me:pw@github.com\n",
    ".config/gcloud/credentials.db": "x",
    ".kube/config": "users: [{name: me, user: {token: x}}]\n",
    ".ssh/id_rsa": OPENSSH,
    "sub/.env": "X=1\n",
}
KEPT = {"job.py", ".calibanconfig.json", "data.txt", ".env.public", "sub/code.py"}


def _listing(tag: str) -> set[str]:
    out = docker_cli("run", "--rm", "--entrypoint", "find", tag, "/usr/app")
    return {line.removeprefix("/usr/app/") for line in out.split() if line != "/usr/app"}


@pytest.mark.docker
async def test_a_folder_full_of_credentials_builds_an_image_without_them(
    env: dict[str, str], home: Path, make_project: MakeProject
) -> None:
    folder = make_project(
        {
            **CREDENTIALS,
            "data.txt": "numbers\n",
            ".env.public": "PUBLIC=1\n",
            "sub/code.py": "x = 1\n",
            ".calibanconfig.json": json.dumps(
                {"default_mode": "cpu", "include_in_image": [".env.public"]}
            ),
        }
    )
    environ = {**env, "GOOGLE_APPLICATION_CREDENTIALS": str(folder / "creds" / "token.txt")}
    seen: list[ev.Event] = []
    async with Session(home=home, environ=environ, sink=seen.append) as session:
        built = await session.build(ProjectOptions(folder=folder, entry="job.py"))
        files = {f for f in _listing(built.tag) if "__pycache__" not in f}
        # Folders that only held credentials may stay, empty; no file of them does.
        assert {f for f in files if not (folder / f).is_dir()} == KEPT, files
        assert not any(f.startswith((".git", ".aws", ".ssh", ".config/gcloud")) for f in files)

        notices = [e for e in seen if isinstance(e, ev.ContextLeftOut)]
        assert len(notices) == 1
        left = set(notices[0].paths)
        assert {".env", ".git/", ".aws/", "keys/trainer.json", "deploy_key"} <= left
        assert {"creds/token.txt", "sub/.env", ".ssh/", "id_rsa"} <= left
        assert notices[0].text.startswith("left out of the image: ")
        assert "What stays out of your image" in notices[0].text

        # What is left out is not part of the content hash either.
        (folder / ".env").write_text("DB_PASSWORD=changed\n")
        (folder / ".git" / "HEAD").write_text("ref: refs/heads/other\n")
        again = await session.build(ProjectOptions(folder=folder, entry="job.py"))
        assert again.skipped and again.tag == built.tag


@pytest.mark.docker
async def test_the_cli_prints_the_notice_once_and_include_brings_git_back(
    env: dict[str, str], make_project: MakeProject
) -> None:
    folder = make_project({".env": "A=1\n", ".git/HEAD": "ref\n", "id_rsa": OPENSSH})
    done = await caliban(["build", "job.py"], cwd=folder, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "left out of the image" in line]
    assert lines == [
        "left out of the image: .env, .git/, id_rsa (credentials; see README.md, "
        "'What stays out of your image')"
    ]

    (folder / ".calibanconfig.json").write_text(
        json.dumps({"default_mode": "cpu", "include_in_image": [".git"]})
    )
    done = await caliban(["build", "job.py"], cwd=folder, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    tag = next(w for w in done.stdout.split() if w.startswith("caliban-proj"))
    files = _listing(tag)
    assert ".git/HEAD" in files and ".env" not in files and "id_rsa" not in files


async def test_the_push_check_finds_keys_that_are_sent(
    session: Session, make_project: MakeProject
) -> None:
    folder = make_project({"tests/fixture.py": f'KEY = """{PEM}"""\n', "ok.py": "x = 1\n"})
    prepared = await session.prepare(ProjectOptions(folder=folder, entry="job.py"))
    with pytest.raises(ConfigError) as err:
        await session.check_push(prepared)
    assert str(err.value).startswith("refusing to push: tests/fixture.py holds a private key;")
    assert "\n" not in str(err.value)

    # A key re-included on purpose is still refused: the image would carry it.
    (folder / "tests" / "fixture.py").unlink()
    (folder / "ca.pem").write_text(PEM)
    (folder / ".calibanconfig.json").write_text(
        json.dumps({"default_mode": "cpu", "include_in_image": ["ca.pem"]})
    )
    prepared = await session.prepare(ProjectOptions(folder=folder, entry="job.py"))
    with pytest.raises(ConfigError, match=r"ca\.pem holds a private key"):
        await session.check_push(prepared)

    # Left out by the rules: nothing to refuse.
    (folder / ".calibanconfig.json").write_text(json.dumps({"default_mode": "cpu"}))
    (folder / "sa.json").write_text(SA_KEY)
    prepared = await session.prepare(ProjectOptions(folder=folder, entry="job.py"))
    await session.check_push(prepared)


@pytest.mark.docker
async def test_cloud_refuses_to_push_an_image_with_a_key_and_builds_nothing(
    tmp_path: Path,
    env: dict[str, str],
    make_project: MakeProject,
    service_account_file: Path,
    vertex_server: FakeVertex,
) -> None:
    folder = make_project({"fixtures/keys.py": f"K = '''{OPENSSH}'''\n"}, name="leaky")
    done = await caliban(
        ["cloud", "--image_registry", "127.0.0.1:9/team", "job.py"],
        cwd=folder,
        env=cli_env(tmp_path, service_account_file, vertex_server, base=env),
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "refusing to push: fixtures/keys.py holds a private key" in lines[0]
    assert vertex_server.counters()["creates_received"] == 0
    assert not docker_cli("images", "-q", "caliban-leaky").strip()
    assert not (tmp_path / "home" / "caliban.db").exists()


@pytest.mark.docker
async def test_a_local_build_with_a_key_warns_and_goes_on(
    session: Session, make_project: MakeProject
) -> None:
    folder = make_project({"fixture.py": f"K = '''{PEM}'''\n"})
    seen: list[ev.Event] = []
    session.sink = seen.append
    built = await session.build(ProjectOptions(folder=folder, entry="job.py"))
    warnings = [e.text for e in seen if isinstance(e, ev.Notice) and e.level == "warning"]
    assert any(
        w.startswith("fixture.py holds a private key and goes into the image") for w in warnings
    )
    assert "fixture.py" in _listing(built.tag)


@pytest.mark.docker
async def test_cluster_refuses_to_push_an_image_with_a_key(
    make_project: MakeProject,
    kube: FakeKubernetes,
    kubeconfig: Path,
    env: dict[str, str],
    home: Path,
) -> None:
    folder = make_project({"conf/sa.txt": "x = " + SA_KEY}, name="leakyk8s")
    req = ClusterJobRequest(
        project=ProjectOptions(folder=folder, entry="job.py", use_gpu=False),
        cluster=ClusterOptions(kubeconfig=str(kubeconfig)),
        image_registry="127.0.0.1:9/team",
        xgroup="leak",
    )
    async with Session(home=home, environ=env) as s:
        with pytest.raises(ConfigError) as err:
            await s.cluster_submit(req)
    assert str(err.value).startswith("refusing to push: conf/sa.txt holds a service-account key")
    assert kube.jobs() == []
    assert not docker_cli("images", "-q", "caliban-leakyk8s").strip()
