"""Reusable pytest fixtures for the Google fakes (import them into a conftest.py).

Every fixture is function-scoped: pytest-asyncio gives each test its own event loop, and the
servers, sessions and gcloud-aio-auth ``Token`` objects must live on the loop that uses them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import tenacity
from cryptography.hazmat.primitives.asymmetric import rsa
from gcloud.aio.auth import Token
from gcloud.aio.auth.token import BaseToken

from .cloudlogging import FakeLogging
from .federation import FakeFederation
from .oauth import CLOUD_PLATFORM, FakeOAuth, write_credentials
from .vertex import FakeVertex


@pytest.fixture
async def oauth_server() -> AsyncIterator[FakeOAuth]:
    """A running :class:`FakeOAuth` (token endpoint + GCE metadata)."""
    async with FakeOAuth() as server:
        yield server


@pytest.fixture
async def federation(oauth_server: FakeOAuth) -> AsyncIterator[FakeFederation]:
    """STS, IAM Credentials and AWS metadata stand-ins minting ``oauth_server`` tokens."""
    async with FakeFederation(oauth_server) as server:
        yield server


@pytest.fixture
def service_account(oauth_server: FakeOAuth) -> tuple[dict[str, str], rsa.RSAPrivateKey]:
    """A registered service account: its key-file dict and private key."""
    return oauth_server.add_service_account()


@pytest.fixture
def service_account_file(
    tmp_path: Path, service_account: tuple[dict[str, str], rsa.RSAPrivateKey]
) -> Path:
    """A service-account key file whose ``token_uri`` is the fake token endpoint."""
    return write_credentials(tmp_path / "service-account.json", service_account[0])


@pytest.fixture
def authorized_user_file(tmp_path: Path, oauth_server: FakeOAuth) -> Path:
    """An authorized_user (gcloud ADC) file registered with the fake token endpoint."""
    return write_credentials(
        tmp_path / "application_default_credentials.json", oauth_server.add_authorized_user()
    )


@pytest.fixture
async def vertex_server(oauth_server: FakeOAuth) -> AsyncIterator[FakeVertex]:
    """A running :class:`FakeVertex` that accepts only tokens issued by ``oauth_server``."""
    async with FakeVertex(token_validator=oauth_server.valid_token) as server:
        yield server


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session, closed after the test (no unclosed-session warnings)."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def google_token(
    service_account_file: Path, http_session: aiohttp.ClientSession
) -> AsyncIterator[Token]:
    """A real gcloud-aio-auth ``Token`` for ``service_account_file``, sharing ``http_session``."""
    token = Token(
        service_file=str(service_account_file), session=http_session, scopes=[CLOUD_PLATFORM]
    )
    try:
        yield token
    finally:
        await token.close()  # leaves the shared session open; http_session closes it


@pytest.fixture
def fast_token_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make gcloud-aio-auth give up after one token attempt instead of 5 with backoff.

    ``acquire_access_token`` is decorated with tenacity's ``@retry``; the decorator's
    ``AsyncRetrying`` object is copied on every call, so patching its ``stop`` takes effect.
    monkeypatch restores it after the test.
    """
    retrying = BaseToken.acquire_access_token.retry
    monkeypatch.setattr(retrying, "stop", tenacity.stop_after_attempt(1))


@pytest.fixture
def instant_token_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep gcloud-aio-auth's 5 token attempts but drop the random exponential wait."""
    retrying = BaseToken.acquire_access_token.retry
    monkeypatch.setattr(retrying, "wait", tenacity.wait_none())


@pytest.fixture
async def logging_server(
    oauth_server: FakeOAuth, vertex_server: FakeVertex
) -> AsyncIterator[FakeLogging]:
    """A running :class:`FakeLogging` linked to ``vertex_server`` (its jobs get entries)."""
    async with FakeLogging(vertex=vertex_server, token_validator=oauth_server.valid_token) as srv:
        yield srv
