"""Keep credentials out of everything vidseg shows or writes.

Every place that prints or stores a source name, a URL or an error message that may quote
one (logs, progress, summary, --stats, window titles, MP4 metadata) passes it through
`mask()`.
"""
from __future__ import annotations

import re

# scheme://user:password@host... (also scheme:/ as mistyped); the password runs to the last "@"
# of the URL, so a "@" or "/" left unescaped in a password is masked too (and at worst a
# port and path before an "@" in a path).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*:/+)(?P<user>[^\s/:@]*):(?P<password>\S*)@")
# ...?user=admin&password=hunter2, as some cameras take it
_QUERY = re.compile(r"(?P<key>[?&;](?:password|passwd|pass|pwd|pw)=)[^&;\s]*", re.IGNORECASE)


def mask(text: str) -> str:
    """`rtsp://admin:hunter2@cam/live` → `rtsp://admin:***@cam/live`, and
    `rtsp://cam/live?user=admin&password=hunter2` → `...&password=***`, anywhere in `text`."""
    return _QUERY.sub(r"\g<key>***", _USERINFO.sub(r"\g<scheme>\g<user>:***@", str(text)))
