"""The user-level settings file: what is the same in every project.

``$CALIBAN_CONFIG``, else ``$XDG_CONFIG_HOME/caliban/config.json``, else
``~/.config/caliban/config.json``. It is validated like ``.calibanconfig.json``
(unknown keys and wrong types are one-line errors naming the key) and flattened
into dotted setting names (``gcloud.project_id``) that :mod:`caliban.core.settings`
resolves against flags, the environment and the project file. A missing file
means no settings; a ``$CALIBAN_CONFIG`` naming a missing file is an error,
since the user asked for that file in particular.

Adding a key is one entry in ``_KEYS`` (its validator returns dotted values)
and one :class:`caliban.core.settings.SettingDef`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from caliban.core.config import _base_image, _default_mode, _did_you_mean, _kind, _Reader
from caliban.core.experiment import parse_json
from caliban.core.labels import sanitize_key
from caliban.errors import CalibanConfigError

ENV_VAR = "CALIBAN_CONFIG"
XDG_ENV = "XDG_CONFIG_HOME"


@dataclass(frozen=True)
class UserConfig:
    """A validated user file: dotted setting name -> value, and where it was read."""

    values: Mapping[str, object] = field(default_factory=dict)
    path: str | None = None


def path_for(environ: Mapping[str, str]) -> Path:
    """Where the user file is, whether or not it exists."""
    explicit = environ.get(ENV_VAR, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = environ.get(XDG_ENV, "").strip()
    # The XDG spec says a relative XDG_CONFIG_HOME is invalid and to be ignored.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "caliban" / "config.json"
    home = environ.get("HOME", "").strip() or str(Path.home())
    return Path(home) / ".config" / "caliban" / "config.json"


# --------------------------------------------------------------------------
# Validation: each validator returns the dotted values of its key.

Parsed = dict[str, object]


def _string(key: str) -> Callable[[_Reader, object], Parsed]:
    return lambda r, v: {key: r.string(v, key).strip()}


def _path(key: str, base: Path) -> str:
    # Relative paths are relative to the file, so the file means the same
    # thing whichever folder caliban runs in.
    path = Path(key).expanduser()
    return str(path if path.is_absolute() else base / path)


def _base_images(r: _Reader, value: object) -> Parsed:
    images = _base_image(r, value)
    return {"base_image.cpu": images.cpu, "base_image.gpu": images.gpu}


def _mode(r: _Reader, value: object) -> Parsed:
    return {"default_mode": _default_mode(r, value).value}


def _labels(r: _Reader, value: object) -> Parsed:
    if not isinstance(value, dict):
        raise r.fail(f"key 'labels' must be an object of names to strings, not {_kind(value)}")
    out: dict[str, str] = {}
    for name, item in value.items():
        if not sanitize_key(name):
            raise r.fail(f"key 'labels': {name!r} has no usable label name")
        out[name.strip()] = r.string(item, f"labels.{name}")
    return {"labels": out}


_GCLOUD = ("project_id", "region", "quota_project", "cloud_key")


def _gcloud(r: _Reader, value: object, base: Path) -> Parsed:
    data = r.mapping(value, "gcloud", _GCLOUD)
    out: Parsed = {}
    for sub in _GCLOUD:
        text = r.optional_string(data.get(sub), f"gcloud.{sub}")
        if text is not None:
            text = text.strip()
            out[f"gcloud.{sub}"] = _path(text, base) if sub == "cloud_key" else text
    return out


_Validator = Callable[[_Reader, object, Path], Parsed]


def _plain(fn: Callable[[_Reader, object], Parsed]) -> _Validator:
    return lambda r, v, _base: fn(r, v)


def _file(key: str) -> _Validator:
    return lambda r, v, base: {key: _path(r.string(v, key).strip(), base)}


_KEYS: dict[str, _Validator] = {
    "base_image": _plain(_base_images),
    "default_mode": _plain(_mode),
    "image_registry": _plain(_string("image_registry")),
    "caliban_home": _file("caliban_home"),
    "labels": _plain(_labels),
    "gcloud": _gcloud,
    "kubeconfig": _file("kubeconfig"),
    "kube_context": _plain(_string("kube_context")),
}

KNOWN_KEYS = tuple(_KEYS)


def from_mapping(data: object, source: str, base: Path | None = None) -> UserConfig:
    """Validate parsed JSON; ``base`` anchors relative paths (the file's folder)."""
    r = _Reader(source)
    if not isinstance(data, dict):
        raise r.fail(f"must contain a JSON object, not {_kind(data)}")
    anchor = base if base is not None else Path(source).parent
    values: Parsed = {}
    for key, value in data.items():
        parse = _KEYS.get(key)
        if parse is None:
            raise r.fail(f"unknown key {key!r}{_did_you_mean(key, KNOWN_KEYS)}")
        if value is not None:
            values.update({k: v for k, v in parse(r, value, anchor).items() if v is not None})
    return UserConfig(values, source)


def load(environ: Mapping[str, str]) -> UserConfig:
    """Read the user file; absent means no settings (unless ``$CALIBAN_CONFIG`` names it)."""
    path = path_for(environ)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        if environ.get(ENV_VAR, "").strip():
            raise CalibanConfigError(f"{path}: no such file (named by ${ENV_VAR})") from None
        return UserConfig()
    except OSError as exc:
        raise CalibanConfigError(
            f"{path}: cannot read: {exc.strerror or type(exc).__name__}"
        ) from None
    except UnicodeDecodeError:
        raise CalibanConfigError(f"{path}: cannot read: not UTF-8 text") from None
    data = parse_json(text, str(path), error=CalibanConfigError)
    return from_mapping(data, str(path), Path(os.path.abspath(path)).parent)
