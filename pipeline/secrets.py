"""Keeping secrets out of everything forgeflow prints, logs or records.

Secrets reach forgeflow only through the environment (``MLFLOW_TRACKING_URI`` with
credentials, ``MLFLOW_TRACKING_PASSWORD``/``TOKEN``, cloud keys); the spec refuses them
(see ``RunConfig.tracking_uri``). :func:`redact` is applied to every URI before it is
shown, to every MLflow param and tag value, to spec error messages and, through
:func:`install_log_redaction`, to every log record of a ``forgeflow`` command.

It hides:
- URI userinfo in every form: ``scheme://user:pa:ss@w@rd@host`` -> ``scheme://user:***@host``,
  ``https://token@host`` -> ``https://***@host`` (a lone user part cannot be told apart
  from a token, so it is hidden too);
- query and fragment parameters that carry credentials (``?token=``, ``access_token=``,
  ``password=``, ``X-Amz-Signature=``, ...): the value becomes ``***``;
- the value of every environment variable whose name says it is a secret
  (``*PASSWORD*``, ``*TOKEN*``, ``*SECRET*``, ``*_KEY``, ``*CREDENTIAL*``, ...), wherever it
  appears in the text.
"""

from __future__ import annotations

import logging
import os
import re

MASK = "***"

# As URL parsers do, the authority runs to the first / ? # and the userinfo to its LAST
# '@', so '@' and ':' inside a password are covered; hosts never contain '@'.
_AUTHORITY = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<authority>[^/?#\s\"'<>`]*)")
_SECRET_PARAM = (r"(?:[A-Za-z0-9_\-]*(?:token|passw(?:or)?d|pwd|secret|api[_\-]?key|apikey|access[_\-]?key|"
                 r"auth|credential|signature|session)[A-Za-z0-9_\-]*|key|sig|code)")
_QUERY = re.compile(r"(?P<sep>[?&#;])(?P<key>" + _SECRET_PARAM + r")=(?P<value>[^&#\s\"'<>]*)",
                    re.IGNORECASE)
_SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|_KEY$|_KEY_|APIKEY|CREDENTIAL|_PAT$)",
                         re.IGNORECASE)
_MIN_ENV_SECRET = 4          # shorter values ("1", "true") would mask ordinary text


def secret_env_values(environ: dict | None = None) -> list[str]:
    """Values of environment variables whose names mark them as secrets, longest first."""
    env = os.environ if environ is None else environ
    # keys first, then get(): another thread (MLflow's telemetry, Ray) may delete a variable
    # while this runs, and iterating os.environ.items() then raises KeyError
    values = set()
    for k in list(env):
        v = env.get(k) if _SECRET_ENV.search(k) else None
        if v and len(v) >= _MIN_ENV_SECRET and v.lower() not in ("true", "false", "none", "null"):
            values.add(v)
    return sorted(values, key=len, reverse=True)


def _hide_userinfo(m: re.Match) -> str:
    userinfo, at, host = m["authority"].rpartition("@")
    if not at:
        return m[0]
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:{MASK}" if colon and user else MASK
    return f"{m['scheme']}{shown}@{host}"


def redact(text: str | None, environ: dict | None = None) -> str:
    """``text`` with every credential replaced by ``***`` (see the module docstring)."""
    if not text:
        return ""
    text = str(text)
    text = _AUTHORITY.sub(_hide_userinfo, text)
    text = _QUERY.sub(lambda m: f"{m['sep']}{m['key']}={MASK}" if m["value"] else m[0], text)
    for value in secret_env_values(environ):
        if value in text:
            text = text.replace(value, MASK)
    return text


def has_credentials(uri: str | None) -> bool:
    """True when the URI carries userinfo or a credential query parameter."""
    return bool(uri) and redact(uri, environ={}) != uri


def _redact_record(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:            # a broken record: leave it to the handler's own error path
        return record
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, ()
    return record


def install_log_redaction() -> None:
    """Redact every log record of this process as it is created, whichever logger or
    handler (Prefect's console and API handlers included) it then goes to. Idempotent."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_forgeflow_redacting", False):
        return

    def factory(*args, **kwargs):
        return _redact_record(previous(*args, **kwargs))

    factory._forgeflow_redacting = True
    logging.setLogRecordFactory(factory)
