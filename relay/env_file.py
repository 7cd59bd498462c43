"""An EnvironmentFile read as systemd reads it, so that `relay` run by hand with
RELAY_ENV_FILE sees the very values the service gets from systemd.

systemd's rules (env-file.c): `#` and `;` start comment lines; whitespace around
the key and before the value is dropped; a value may mix unquoted, 'single-' and
"double-quoted" parts, which are joined. Unquoted, a backslash takes the next
character as it is and trailing whitespace is dropped; in single quotes nothing
is special; in double quotes a backslash escapes only \\ " ` and $ (before any
other character it stays). A backslash at the end of a line joins the next
line to it, and quotes may span lines.

Unlike systemd, relay refuses what systemd skips, or takes as it comes, or takes
one way or the other by its version, so that what runs by hand is what the
service gets: a line that is not KEY=VALUE (`export NAME=value` among them:
systemd skips it as an invalid name), a quote never closed (systemd would take
the rest of the file as its value), and a comment ending in a backslash followed
by a setting (systemd before 254, as in Debian 12 and Ubuntu 22.04, continues the
comment onto the next line and drops that line; 254 and later do not). A blank
line or another comment after it reads the same either way, as does a backslash
before a CRLF line end (the backslash escapes the CR).
"""

from __future__ import annotations

import re

_WHITESPACE = " \t\n\r"
_NEWLINE = "\n\r"
_COMMENT = "#;"
_ESCAPED_IN_DOUBLE_QUOTES = '"\\`$'
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPORT = re.compile(r"export[ \t]")


class EnvFileError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def parse_env_file(text: str) -> dict[str, str]:
    """KEY → value, as systemd would set them; EnvFileError names the first bad line."""
    values: dict[str, str] = {}
    state = "pre_key"
    key: list[str] = []
    value: list[str] = []
    keep = 0  # unquoted trailing whitespace is dropped: the value's length before it
    line = key_line = 1

    def store() -> None:
        name = "".join(key).strip(_WHITESPACE)
        if _EXPORT.match(name):
            raise EnvFileError(
                key_line, "starts with `export`, which systemd skips: write KEY=VALUE alone"
            )
        if not _NAME.fullmatch(name):
            raise EnvFileError(key_line, "is not KEY=VALUE")
        values[name] = "".join(value[:keep])

    for char in text:
        if state == "pre_key":
            if char in _COMMENT:
                state = "comment"
            elif char not in _WHITESPACE:
                state, key, key_line = "key", [char], line
        elif state == "key":
            if char in _NEWLINE:
                raise EnvFileError(key_line, "is not KEY=VALUE")
            if char == "=":
                state, value, keep = "pre_value", [], 0
            else:
                key.append(char)
        elif state == "pre_value":
            if char in _NEWLINE:
                store()
                state = "pre_key"
            elif char == "'":
                state = "single_quoted"
            elif char == '"':
                state = "double_quoted"
            elif char == "\\":
                state = "escaped"
            elif char not in _WHITESPACE:
                state = "unquoted"
                value.append(char)
                keep = len(value)
        elif state == "unquoted":
            if char in _NEWLINE:
                store()
                state = "pre_key"
            elif char == "\\":
                state, keep = "escaped", len(value)
            else:
                value.append(char)
                if char not in _WHITESPACE:
                    keep = len(value)
        elif state == "escaped":
            state = "unquoted"
            if char not in _NEWLINE:  # a backslash before a line end joins the lines
                value.append(char)
                keep = len(value)
        elif state == "single_quoted":
            if char == "'":
                state, keep = "pre_value", len(value)
            else:
                value.append(char)
        elif state == "double_quoted":
            if char == '"':
                state, keep = "pre_value", len(value)
            elif char == "\\":
                state = "double_quoted_escape"
            else:
                value.append(char)
        elif state == "double_quoted_escape":
            state = "double_quoted"
            if char in _ESCAPED_IN_DOUBLE_QUOTES:
                value.append(char)
            elif char != "\n":
                value += ("\\", char)
        elif state == "comment":
            if char == "\\":
                state = "comment_escape"
            elif char in _NEWLINE:
                state = "pre_key"
        elif state == "comment_escape":
            # Escaped, a CR is one more character of the comment, which the LF then ends.
            state = "continued" if char == "\n" else "comment"
        else:  # continued: the line systemd before 254 takes for more of the comment
            if char in _COMMENT:
                state = "comment"  # a comment either way
            elif char == "\n":
                state = "pre_key"  # a blank line either way
            elif char not in _WHITESPACE:
                raise EnvFileError(
                    line - 1,
                    "is a comment ending in a backslash, which systemd before 254"
                    f" continues onto line {line}, dropping its setting: end it otherwise",
                )
        if char == "\n":
            line += 1
    if state == "key":
        raise EnvFileError(key_line, "is not KEY=VALUE")
    if state in ("single_quoted", "double_quoted", "double_quoted_escape"):
        raise EnvFileError(key_line, "has a quote that is never closed")
    if state not in ("pre_key", "comment", "comment_escape", "continued"):  # no line end
        store()
    return values
