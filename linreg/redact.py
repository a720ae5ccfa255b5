"""Credentials never leave the process: they are redacted from everything persisted, logged or shown.

A credential is the user-info of a URI (`s3://KEY:SECRET@bucket/path`, which pyarrow accepts) and the value
of a `name=value` pair whose name looks secret (`SENSITIVE`, after Spark's `spark.redaction.regex`:
secret, password, token, credential, signature, session, access key...), in a URI's query or in free text.
`redact` replaces them with `***` and keeps the scheme, host, path and the other query keys, so messages
stay useful and the redacted URI is the same whatever the credential (fingerprints and the configuration
that `--skip-if-unchanged` compares do not change when only a credential does).

The run itself still needs the real URIs. `protect(uri)` returns the redacted URI and remembers the real
one in the environment variable LINREG_SECRET_URIS (JSON, redacted -> real), which torchrun's ranks and
other children inherit: never their command line, which `ps` shows to every user of the machine.
`reveal(uri)` gives the real URI back (also for a path under it) where a filesystem or client is made from
one (`linreg.inputs.tables.open_table`, `linreg.outputs.commit.resolve`, the S3 commit lock, the output check). So the entry
points (the command lines, the flows, a rank's main) protect the configuration once, and everything after
them, Prefect included, sees only redacted URIs. `install_log_redaction` is the safety net behind that:
every log record's text goes through `redact`, as Spark redacts its logs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.parse

ENV = "LINREG_SECRET_URIS"
MASK = "***"
# Names whose values are credentials. Plain "key" only as a whole word or suffix (account_key, sas-key), so
# that columns and options such as join_keys or keys stay readable.
SENSITIVE = re.compile(r"secret|passw(?:or)?d|pwd|token|credential|signature|session|auth|access[_.-]?key"
                       r"|(?:^|[_.-])key$|^sig$", re.IGNORECASE)
# A URI inside text: scheme://, then anything up to whitespace or a quote.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]*")
# User-info: the authority up to '@'; or, for a secret with a raw '/' in it, 'user:...' up to the first '@'.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(?:[^/?#@]*|[^/?#@:]*:[^@]*)@")
# name=value outside URIs (and inside their queries): the value ends at whitespace, '&', quotes or ',;'.
_PAIR = re.compile(r"(?<![\w.-])([\w.-]+)=([^\s&'\",;]+)")
_MIN_SECRET = 4  # shorter known secrets are not replaced in free text: they would mangle ordinary words


def redact(text: str) -> str:
    """`text` (a URI, a message, a command-line argument) with every credential replaced by ***."""
    if not isinstance(text, str) or not text:
        return text
    parts, last = [], 0
    for match in _URI.finditer(text):
        parts += [_redact_pairs(text[last:match.start()]), redact_uri(match.group())]
        last = match.end()
    parts.append(_redact_pairs(text[last:]))
    return _redact_known("".join(parts))


def redact_uri(uri: str) -> str:
    """One URI without its user-info and with the values of sensitive query keys replaced by ***."""
    uri = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", uri, count=1)
    return _map_query(uri, lambda name, value: MASK if value and _sensitive(name) else value)


def _sensitive(name: str) -> bool:
    return SENSITIVE.search(urllib.parse.unquote_plus(name)) is not None


def _query_pairs(uri: str) -> list[tuple[str, str]]:
    """(name, value) of each name=value of the URI's query, as written."""
    query = uri.partition("?")[2].partition("#")[0]
    return [(name, value) for name, equals, value in (p.partition("=") for p in query.split("&")) if equals]


def _map_query(uri: str, change) -> str:
    """`uri` with the value of each query pair replaced by change(name, value)."""
    base, question, rest = uri.partition("?")
    if not question:
        return uri
    query, hash_, fragment = rest.partition("#")
    pairs = []
    for pair in query.split("&"):
        name, equals, value = pair.partition("=")
        pairs.append(f"{name}={change(name, value)}" if equals else pair)
    return f"{base}?{'&'.join(pairs)}{hash_}{fragment}"


def _redact_pairs(text: str) -> str:
    return _PAIR.sub(lambda m: f"{m.group(1)}={MASK}" if SENSITIVE.search(m.group(1)) else m.group(), text)


def _redact_known(text: str) -> str:
    """Replace every credential this process protected, wherever it appears (a safety net for text that
    quotes one outside a URI, e.g. an error message of a library)."""
    for secret in sorted(known_secrets(), key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def has_credentials(text: str) -> bool:
    """True when `text` carries a credential that `redact` would hide."""
    return isinstance(text, str) and redact(text) != text


def credentials_of(uri: str) -> list[str]:
    """The credential values in `uri` (user-info parts, sensitive query values), as written and decoded."""
    found = []
    match = _USERINFO.match(uri)
    if match:
        userinfo = uri[len(match.group(1)):match.end() - 1]
        found += [userinfo, *userinfo.split(":", 1)]
    found += [value for name, value in _query_pairs(uri) if value and _sensitive(name)]
    forms = {form for value in found for form in (value, urllib.parse.unquote(value),
                                                   urllib.parse.unquote_plus(value))}
    return sorted(f for f in forms if len(f) >= _MIN_SECRET and f != MASK)


# ---------------------------------------------------------------------------------------------------------
# The process's real URIs: protect at the entry points, reveal where a filesystem is made

def _registry() -> dict[str, str]:
    try:
        mapping = json.loads(os.environ.get(ENV) or "{}")
    except json.JSONDecodeError:
        return {}
    return mapping if isinstance(mapping, dict) else {}


def known_secrets() -> set[str]:
    """Every credential of the URIs protected in this process (or its parent)."""
    return {s for real in _registry().values() for s in credentials_of(real)}


def protect(uri: str | None) -> str | None:
    """The redacted form of `uri`, remembering the real one for `reveal` (in this process and its children).

    A later real URI with the same redacted form replaces the earlier one: a new run's credentials win."""
    if not has_credentials(uri or ""):
        return uri
    redacted = redact_uri(uri)
    mapping = _registry()
    if mapping.get(redacted) != uri:
        mapping[redacted] = uri
        os.environ[ENV] = json.dumps(mapping, sort_keys=True)
    return redacted


def reveal(uri: str) -> str:
    """The real URI behind a redacted one (unchanged when it is not redacted).

    A URI that still holds *** after that lost its credential (copied from an output's metadata, or
    passed to a process that was not given them): a clear error, rather than a request signed with ***."""
    from linreg.errors import InputError

    mapping = _registry()
    real = mapping.get(uri) or _derived(uri, mapping) or uri
    if MASK in real and _redacted_credential(real):
        raise InputError(f"The URI {real!r} carries a redacted credential ({MASK}): the real one is not known to "
                         "this process. Pass credentials through the environment (e.g. AWS_ACCESS_KEY_ID, "
                         "AWS_SECRET_ACCESS_KEY or AWS_PROFILE for S3) and drop them from the URI, or give the "
                         "URI with its credentials on this process's command line.")
    return real


def _derived(uri: str, mapping: dict[str, str]) -> str | None:
    """A URI derived from a protected one (a path under it, such as OUTPUT/weights/run_id=ID) with that one's
    credentials put back: same scheme, redacted user-info and host; masked query values filled by name."""
    if not _redacted_credential(uri):
        return None
    store = urllib.parse.urlsplit(uri)[:2]  # (scheme, '***@host')
    real = next((r for red, r in mapping.items() if urllib.parse.urlsplit(red)[:2] == store), None)
    if real is None:
        return None
    own, theirs = _USERINFO.match(uri), _USERINFO.match(real)
    if own and theirs:
        uri = theirs.group() + uri[own.end():]
    values = dict(_query_pairs(real))
    return _map_query(uri, lambda name, value: values.get(name, value) if value == MASK else value)


def _redacted_credential(uri: str) -> bool:
    """True when `uri` holds *** where a credential was."""
    match = _USERINFO.match(uri)
    if match and uri[len(match.group(1)):match.end() - 1] == MASK:
        return True
    return any(value == MASK for _, value in _query_pairs(uri))


def redact_config(values):
    """A configuration (a dict such as `TrainConfig.model_dump(mode="json")`, or one of its values) with
    every string in it redacted."""
    def clean(value):
        if isinstance(value, str):
            return redact(value)
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value
    return clean(values)


def inline_credentials(config, prefix: str = "config") -> list[str]:
    """Names of the fields of a pydantic configuration that carry credentials, e.g. ['config.output']."""
    return [f"{prefix}.{name}" for name, value in config.model_dump(mode="json").items()
            if isinstance(value, str) and has_credentials(value)]


def protect_config(config):
    """A copy of a pydantic configuration whose URIs are redacted (the real ones are remembered)."""
    update = {name: protect(value) for name, value in config.model_dump().items()
              if isinstance(value, str) and has_credentials(value)}
    return config.model_copy(update=update) if update else config


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with every credential redacted (to hand to child processes, which `reveal`)."""
    return [redact(arg) for arg in argv]


# ---------------------------------------------------------------------------------------------------------
# Logs: every record's text is redacted when it is made, whatever logger or handler it goes to

def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redact a log record's message (arguments merged in) and its traceback text, in place."""
    try:
        message = record.getMessage()
    except (TypeError, ValueError):  # a malformed call: leave it to logging's own error report
        return record
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = redact(text)  # formatters reuse exc_text instead of formatting the traceback again
    return record


class RedactingFilter(logging.Filter):
    """A logging filter (for handlers made elsewhere) that redacts each record and lets it through."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def install_log_redaction() -> None:
    """Make every log record of this process redacted as it is created (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return

    def factory(*args, **kwargs):
        return redact_record(previous(*args, **kwargs))

    factory.redacts = True
    logging.setLogRecordFactory(factory)


def protect_parameters(config, logger: logging.Logger):
    """A flow's configuration with its URIs redacted from here on (the real ones kept in the process).

    A credential found here came inline in the flow run's parameters (a deployment's `--params`), which
    Prefect stored before our code ran: one warning on `logger` names the parameters, and the run goes on."""
    install_log_redaction()
    warn_inline(inline_credentials(config), logger)
    return protect_config(config)


def warn_inline(names: list[str], logger: logging.Logger) -> None:
    """One warning naming the flow parameters that came with a credential inline (none: no warning)."""
    if names:
        logger.warning("parameter %s carries a credential, which Prefect has stored with the flow run's "
                       "parameters; pass credentials through the environment, a profile or a Prefect Secret "
                       "block instead (see docs/credentials.md). The run uses it; its outputs, logs and artifacts "
                       "show it redacted.", ", ".join(names))
