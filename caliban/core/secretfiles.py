"""Credentials never go into an image: which files are left out, and what a scan flags.

Pure: path rules and byte sniffing only; ``build.py`` does the reading.

Three layers, applied to every entry of the build context after ``.dockerignore``:

* **names** (:data:`CREDENTIAL_PATTERNS`): key files, ``.env`` files, tool
  configuration that holds tokens (``.aws/``, ``.docker/config.json``, ...) and
  ``.git/``, at any depth;
* **content** (:func:`credential_file`): a file that *is* a credential whatever
  its name: a service-account or gcloud user key (JSON), or a PEM/OpenSSH
  private key;
* **the named key**: the file ``GOOGLE_APPLICATION_CREDENTIALS`` or
  ``--cloud_key`` points to, wherever it sits in the folder (``build.py``
  compares inodes).

``.dockerignore`` cannot bring these back (a ``!data/`` line re-includes a
folder, not the ``.env`` someone left in it); only ``include_in_image`` in
``.calibanconfig.json`` does, and only for the paths it names. What is left out
does not enter the image's content hash either: the image does not depend on
it, so editing ``.env`` does not rebuild.

Separately, :func:`secret_in` flags a private key or service-account key
*anywhere* in the head of a file that is sent (a key pasted into a test
fixture, a re-included file): ``cloud`` and ``cluster`` refuse to push such an
image, local builds warn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from caliban.core.dockerignore import DockerIgnore

__all__ = [
    "CREDENTIAL_PATTERNS",
    "HEAD_BYTES",
    "CredentialRules",
    "credential_file",
    "left_out_text",
    "secret_in",
]

DOCS = "README.md, 'What stays out of your image'"

# How much of each file the scan reads: enough for a key file, a JSON key or a
# key after a few certificates in a bundle, without reading datasets.
HEAD_BYTES = 16 << 10

# Matched at any depth (dockerignore syntax); a directory takes its contents with it.
CREDENTIAL_PATTERNS: tuple[str, ...] = (
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "*.p12",
    "*.pfx",
    ".env",
    ".env.*",
    ".ssh",
    ".gnupg",
    ".aws",
    ".docker/config.json",
    ".netrc",
    ".pypirc",
    ".npmrc",
    ".git-credentials",
    ".config/gcloud",
    ".kube/config",
    ".git",
)

_PEM_PRIVATE = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_JSON_KEY = re.compile(
    rb'"type"\s*:\s*"(service_account|authorized_user|external_account)"', re.ASCII
)
_JSON_SECRET_FIELD = re.compile(rb'"(private_key|refresh_token|client_secret)"\s*:', re.ASCII)


def _json_key(head: bytes) -> str | None:
    kind = _JSON_KEY.search(head)
    if kind is None or _JSON_SECRET_FIELD.search(head) is None:
        return None
    return "service-account key" if kind[1] == b"service_account" else "Google credentials"


def _binary(head: bytes) -> bool:
    return b"\0" in head[:1024]


def credential_file(head: bytes) -> str | None:
    """What kind of credential a file *is*, judging by its first bytes, or None.

    A file that starts with a private key, or a Google key JSON, holds nothing
    else worth shipping; a key pasted into source code is :func:`secret_in`'s.
    """
    if _binary(head):
        return None
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if _PEM_PRIVATE.match(stripped):
        return "private key"
    if stripped.startswith(b"{"):
        return _json_key(head)
    return None


def secret_in(head: bytes) -> str | None:
    """A private key or Google key anywhere in ``head``: what it is, or None.

    Binary files are skipped: DER keys have no marker to find, and model weights
    full of random bytes would only give false alarms.
    """
    if _binary(head):
        return None
    # A key JSON holds a PEM block too; name the more specific thing.
    return _json_key(head) or ("private key" if _PEM_PRIVATE.search(head) else None)


def _any_depth(pattern: str) -> str:
    return pattern if pattern.startswith("**/") else "**/" + pattern


class CredentialRules:
    """``.dockerignore`` with the credential name rules layered on top.

    Satisfies :class:`caliban.core.dockerignore.ContextRules`, so the context walker
    prunes credential folders (``.git/`` can be large) instead of walking them.
    Every path the rules leave out is appended to :attr:`left_out`, folders
    with a trailing ``/``, once each, in walk order.
    """

    def __init__(self, ignore: DockerIgnore, include: Sequence[str] = ()) -> None:
        self.ignore = ignore
        self.include = DockerIgnore.parse("\n".join(include))
        self._names = DockerIgnore.parse("\n".join(_any_depth(p) for p in CREDENTIAL_PATTERNS))
        self.left_out: list[str] = []
        self._seen: set[str] = set()
        # Per directory: the depth of the deepest ancestor (or itself) that
        # include_in_image names, and the depths of those the name rules match.
        self._dirs: dict[str, tuple[int, tuple[int, ...]]] = {}

    def _state(self, rel: str) -> tuple[int, tuple[int, ...]]:
        parent = rel.rpartition("/")[0]
        if parent:
            if parent not in self._dirs:
                self._dirs[parent] = self._state(parent)
            included, hits = self._dirs[parent]
        else:
            included, hits = -1, ()
        depth = rel.count("/")
        if self._names.matches(rel):
            hits = (*hits, depth)
        if self.include and self.include.matches(rel):
            included = depth
        return included, hits

    def _blocked(self, rel: str) -> str | None:
        """The top-most credential in ``rel``'s ancestry (``rel`` included) that no
        ``include_in_image`` entry at or below it brings back, or None."""
        included, hits = self._state(rel)
        for depth in hits:
            if depth > included:
                return "/".join(rel.split("/")[: depth + 1])
        return None

    def included_on_purpose(self, rel: str) -> bool:
        """Whether ``include_in_image`` names this very file (content rules ask this)."""
        return self.include.matches(rel)

    def leave_out(self, rel: str, is_dir: bool = False) -> None:
        shown = rel + "/" if is_dir else rel
        if shown not in self._seen:
            self._seen.add(shown)
            self.left_out.append(shown)

    def excluded(self, relpath: str, is_dir: bool = False) -> bool:
        if self.ignore.excluded(relpath, is_dir):
            # The user's own choice: nothing to report.
            return True
        hit = self._blocked(relpath)
        if hit is None:
            return False
        self.leave_out(hit, is_dir=hit != relpath or is_dir)
        return True

    def can_prune(self, reldir: str) -> bool:
        if self.ignore.excluded(reldir, True) and self.ignore.can_prune(reldir):
            return True
        if self._blocked(reldir) is None:
            return self.ignore.can_prune(reldir)
        return not self.include.could_match_below(reldir)


def left_out_text(paths: Sequence[str], limit: int = 8) -> str:
    """The one line the UI prints about what the credential rules kept out."""
    shown = ", ".join(paths[:limit])
    if len(paths) > limit:
        shown += f" and {len(paths) - limit} more"
    return f"left out of the image: {shown} (credentials; see {DOCS})"
