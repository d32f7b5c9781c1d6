"""Keep credentials out of everything vidseg shows or writes.

Every place that prints or stores a source name, a URL or an error message that may quote
one (logs, progress, summary, --stats, window titles, MP4 metadata) passes it through
`mask()`.
"""
from __future__ import annotations

import re

# scheme://user:password@host... ; the password runs to the last "@" before the path, so an
# unescaped "@" in a password is masked too.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/:@]*):(?P<password>[^\s/]*)@")


def mask(text: str) -> str:
    """`rtsp://admin:hunter2@cam/live` → `rtsp://admin:***@cam/live`, anywhere in `text`."""
    return _USERINFO.sub(r"\g<scheme>\g<user>:***@", str(text))
