"""Keep credentials out of everything that leaves the process.

A key reaches the server three ways: the API key as a Bearer header, the
userinfo of the base URL (``http://user:KEY@host/v1``, sent as basic auth)
and a query parameter of it (``?api_key=KEY``). A server may echo any of them
back in an error, and an HTTP library names the URL in its exceptions. Text
bound for a record, a stderr line or a file passes through `redact` first.
"""
from __future__ import annotations

import base64
import re
from typing import Iterable
from urllib.parse import unquote, unquote_plus, urlsplit

API_KEY_VAR = "OPENAI_API_KEY"
MASK = "***"

# a query parameter holds a credential when its name says so: key, api_key, token,
# access_token, client_secret, password, auth, sig, X-Amz-Signature, X-Amz-Credential ...
SECRET_PARAM = re.compile(r"key|token|secret|passw|auth|sig|cred", re.IGNORECASE)

# a shorter value is not searched for in free text: a key of "x" would erase every x
MIN_SECRET_CHARS = 4

_BEARER = re.compile(r"(\bBearer\s+)[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s?#\"'<>]*@")
# a userinfo however a URL is written: after the scheme's slashes, or with no scheme at all
_ANY_USERINFO = re.compile(r"(^|/)[^/\s?#@]*@")
_PARAM = re.compile(r"([?&;]([^=&;?#\s\"'<>]+)=)([^&;#\s\"'<>]*)")


def credentials(base_url: str, api_key: str | None) -> tuple[str, ...]:
    """List the secret values a run sends: the API key, the URL's userinfo and its
    secret-named query values (raw and decoded), and the basic-auth token made
    of the userinfo."""
    parts = urlsplit(base_url)
    found = [api_key or ""]
    if parts.password:
        found += [parts.password, unquote(parts.password)]
        # httpx sends the userinfo as basic auth: a server may echo the header
        user_pass = f"{unquote(parts.username or '')}:{unquote(parts.password)}"
        found.append(base64.b64encode(user_pass.encode()).decode())
    elif parts.username:    # a token given as the user name alone
        found += [parts.username, unquote(parts.username)]
    for pair in re.split(r"[&;]", parts.query):
        name, _, value = pair.partition("=")
        if SECRET_PARAM.search(unquote(name)):
            found += [value, unquote_plus(value)]   # a server may echo either form
    return tuple(dict.fromkeys(s for s in found if s))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask in text each secret value, any Bearer token, and the credentials
    of any URL in it (its userinfo and its secret-named query values)."""
    text = mask_values(text, secrets)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    text = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    return _PARAM.sub(lambda m: m.group(1) + MASK if SECRET_PARAM.search(m.group(2)) else m.group(0), text)


def mask_values(text: str, secrets: Iterable[str]) -> str:
    """Mask each secret value in text, and nothing else: for data kept as
    received, such as streamed events, whose other words must stay as they are."""
    # the longest first: a key that holds another is masked whole, not around the other
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_CHARS and secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_url(url: str) -> str:
    """Mask a URL as `redact` does, and a userinfo it holds without a scheme
    (``user:KEY@host``) too: for a URL refused as malformed, shown back to the user."""
    return _ANY_USERINFO.sub(lambda m: m.group(1) + MASK + "@", redact(url))
