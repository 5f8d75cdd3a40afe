"""An IP camera's user and password: never in the config, never shown.

A URL in the config or on the command line ends up in `ps`, in a generated systemd unit and in the
run directory, so `source.device` carries no credentials; `source.credentials` names a file
holding one line `USER:PASSWORD` that only its owner may read (mode 0600). A bare name (no `/`)
is a systemd credential: `$CREDENTIALS_DIRECTORY/NAME` when that is set (`LoadCredential=NAME:FILE`
in the unit), else the file NAME in the working directory. The capture process puts them into
the URL only to open the stream (`with_credentials`); every URL shown goes through `mask_url`.
"""

from __future__ import annotations

import os
import stat
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pipeline.errors import UserError

CREDENTIALS_DIR_ENV = "CREDENTIALS_DIRECTORY"  # set by systemd for LoadCredential=
MAX_CREDENTIALS_BYTES = 4096
# Query parameters some cameras take credentials in (shown as ***).
SECRET_PARAMS = ("user", "username", "usr", "pass", "password", "passwd", "pwd", "token", "key",
                 "auth", "secret", "apikey", "api_key", "access_token")


class CredentialsError(UserError):
    """A credentials file that is missing, unsafe or malformed; one line."""


def mask_url(url: str) -> str:
    """`url` as it may be shown: everything between `://` and the last `@` (the user info,
    whatever characters the password holds) becomes `***`, and so do the values of query
    parameters that look like credentials."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    masked = f"{scheme}://{rest}"
    try:
        parts = urlsplit(masked)
    except ValueError:  # e.g. an unbalanced [ in the host: show no query at all
        return masked.split("?", 1)[0]
    if not parts.query:
        return masked
    query = [(k, "***" if k.lower() in SECRET_PARAMS else v)
             for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def has_user_info(url: str) -> bool:
    """Whether a URL may carry a user or password: an `@` anywhere after `://` (a password may
    hold `/`, `?` or `#`, so no part of the URL is above suspicion; `mask_url` hides up to it)."""
    return "@" in url.partition("://")[2]


def credentials_path(setting: str) -> str:
    """The file `source.credentials` names (a bare name: a systemd credential, see above)."""
    if "/" not in setting and os.environ.get(CREDENTIALS_DIR_ENV):
        return os.path.join(os.environ[CREDENTIALS_DIR_ENV], setting)
    return setting


def read_credentials(setting: str, key: str = "source.credentials") -> tuple[str, str]:
    """(user, password) from the file `setting` names, which only its owner may read."""
    path = credentials_path(setting)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise CredentialsError(f"{key}: cannot read {path}: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CredentialsError(f"{key}: {path} is not a regular file")
        if info.st_mode & 0o077:
            raise CredentialsError(f"{key}: {path} may be read by others (mode "
                                   f"{stat.S_IMODE(info.st_mode):04o}); allow only its owner: "
                                   f"chmod 600 {path}")
        data = os.read(fd, MAX_CREDENTIALS_BYTES + 1)
    finally:
        os.close(fd)
    line = data.decode("utf-8", "replace").split("\n", 1)[0].rstrip("\r")
    user, sep, password = line.partition(":")
    if len(data) > MAX_CREDENTIALS_BYTES or not sep or not user or "\0" in line:
        raise CredentialsError(f"{key}: {path} must hold one line USER:PASSWORD")
    return user, password


def with_credentials(url: str, user: str, password: str) -> str:
    """`url` with the user and password put in as its user info (percent-encoded, so any
    character may be in them); for opening the stream only, never for showing."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{rest}"
