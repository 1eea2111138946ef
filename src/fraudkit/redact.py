"""Secret masking: the one place that decides what a secret looks like in settings and in text.

`mask_secrets` is applied to everything fraudkit shows that may carry a credential: `config show`,
error lines at the CLI boundary, database descriptions in `sink --json`, `report --json` and the
HTML report. It is deliberately generous: masking a harmless value costs nothing, leaking a
password costs a lot.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "******"

# Setting names whose whole value is a secret: passwords, secrets, tokens, private keys and the
# librdkafka/Java settings that embed credentials in one string (sasl.oauthbearer.config holds
# `clientSecret=...`, sasl.jaas.config holds `password="..."`).
_SECRET_KEY = re.compile(
    r"password|passwd|passphrase|secret|token|credential|api[._-]?key|private[._-]?key"
    r"|(^|[._])key($|[._]pem$)|oauthbearer[._]config|jaas[._]config",
    re.I,
)
# Settings that name where a secret is (a file path, an endpoint), not the secret itself.
_NOT_SECRET_SUFFIXES = (".location", ".url", ".file", ".path")

# scheme://userinfo@host: the authority runs to the first "/" or whitespace and its userinfo to
# the LAST "@" in it (a password may contain "@", a host never does); the password is what
# follows the first ":" of the userinfo, so an empty user name (`://:pw@host`) is covered.
_URL_AUTHORITY = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<authority>[^/\s]+)", re.I)
# key=value pairs in URL queries, libpq conninfo strings and librdkafka/Java config strings.
_KEY_VALUE = re.compile(
    r"(?P<lead>(?:^|[?&;,\s\"'({]))(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^&;,\s\"')}]*)"
)
# "key": "value" pairs in JSON or Python reprs of settings.
_QUOTED_PAIR = re.compile(
    r"(?P<quote>[\"'])(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)(?P=quote)(?P<colon>\s*:\s*)"
    r"(?P<value>\"[^\"]*\"|'[^']*')"
)


def is_secret_key(key: str) -> bool:
    """True for setting names whose values must never be printed (passwords, secrets, keys)."""
    lowered = key.lower()
    return bool(_SECRET_KEY.search(lowered)) and not lowered.endswith(_NOT_SECRET_SUFFIXES)


def _mask_authority(match: re.Match[str]) -> str:
    authority = match["authority"]
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return match[0]
    user, colon, password = userinfo.partition(":")
    if not colon or not password:
        return match[0]
    return f"{match['scheme']}{user}:{MASK}@{host}"


def _mask_pair(match: re.Match[str]) -> str:
    if not is_secret_key(match["key"]) or not match["value"]:
        return match[0]
    value = match["value"]
    quote = value[0] if value[0] in "\"'" else ""
    return f"{match['lead']}{match['key']}={quote}{MASK}{quote}"


def _mask_quoted_pair(match: re.Match[str]) -> str:
    if not is_secret_key(match["key"]) or len(match["value"]) <= 2:
        return match[0]
    quote = match["value"][0]
    return f"{match['quote']}{match['key']}{match['quote']}{match['colon']}{quote}{MASK}{quote}"


def mask_secrets(text: str) -> str:
    """Text with URL passwords (`scheme://user:pw@host`) and secret `key=value` pairs masked."""
    if not text:
        return text
    text = _URL_AUTHORITY.sub(_mask_authority, text)
    text = _QUOTED_PAIR.sub(_mask_quoted_pair, text)
    return _KEY_VALUE.sub(_mask_pair, text)


def masked(data: Any, key: str = "") -> Any:
    """A copy of plain config data with secret values replaced by a mask (secrets in strings too)."""
    if isinstance(data, dict):
        return {k: masked(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [masked(v, key) for v in data]
    if key and is_secret_key(key) and data not in (None, ""):
        return MASK
    if isinstance(data, str):
        return mask_secrets(data)
    return data
