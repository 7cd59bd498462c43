"""RELAY_ENV_FILE is read by systemd's EnvironmentFile rules: `relay` run by hand sees
what the service sees."""

from __future__ import annotations

import pytest

from relay.env_file import EnvFileError, parse_env_file

# Each line as systemd sets it (env-file.c); the expected values follow its rules.
CASES = [
    ("A=plain", "plain"),
    ("A=  spaced around  ", "spaced around"),
    ("  A  =x", "x"),
    ("A=", ""),
    ("A='single # not a comment'", "single # not a comment"),
    ("A='no \\escapes\\ here'", "no \\escapes\\ here"),
    ('A="double \\" quote"', 'double " quote'),
    ('A="keeps \\n and \\q"', "keeps \\n and \\q"),
    ('A="escapes \\\\ \\` \\$"', "escapes \\ ` $"),
    ("A=unquoted\\ space\\\\", "unquoted space\\"),
    ("A=with#hash;semi", "with#hash;semi"),
    ("A='joined'\"parts\"and more", "joinedpartsand more"),
    ('A="  kept  "', "  kept  "),
    ("A=tail\\\n  continued", "tail  continued"),
    ("A=space before \\\n", "space before "),
    ('A="first\nsecond"', "first\nsecond"),
    ('A="joined \\\nline"', "joined line"),
    ("A=crlf\r\n", "crlf"),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[case[0] for case in CASES])
def test_values_are_read_as_systemd_reads_them(text, expected):
    assert parse_env_file(text) == {"A": expected}


def test_comments_blank_lines_and_several_settings():
    text = (
        "# a comment\n"
        "; also a comment\n"
        "\n"
        "   # indented comment \\\\\n"  # an escaped backslash: the comment ends here
        "RELAY_LOG_LEVEL=INFO\n"
        "# a \\comment\n"
        "RELAY_PORT=9100\n"
        'RELAY_HOST="10.0.0.1"\n'
        "RELAY_PORT=9200\n"
        "exporter=a name like any other\n"
    )
    assert parse_env_file(text) == {
        "RELAY_LOG_LEVEL": "INFO",
        "RELAY_PORT": "9200",
        "RELAY_HOST": "10.0.0.1",
        "exporter": "a name like any other",
    }


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("RELAY_PORT=1\nnot a setting\n", 2),
        ("A=1\n\nB C=2\n", 3),
        ("1A=x", 1),
        ("A=1\nB", 2),
        ('A=1\nB="never closed\nC=3\n', 2),
    ],
)
def test_a_line_that_is_no_setting_is_refused_by_number(text, line):
    with pytest.raises(EnvFileError) as raised:
        parse_env_file(text)
    assert raised.value.line == line


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        # systemd skips it ("invalid variable name"): by hand it would be set, and
        # the service would run without it.
        ("RELAY_PORT=1\nexport RELAY_ENV=production\n", 2, "starts with `export`"),
        ("export\tRELAY_ENV=production", 1, "starts with `export`"),
        # systemd before 254 (Debian 12, Ubuntu 22.04) drops the line after it.
        ("# a note \\\nRELAY_ENV=production\n", 1, "comment ending in a backslash"),
        ("A=1\n  ; note \\\n  B=2\n", 2, "continues onto line 3, dropping its setting"),
    ],
)
def test_lines_systemd_skips_or_reads_by_its_version_are_refused(text, line, words):
    with pytest.raises(EnvFileError) as raised:
        parse_env_file(text)
    assert raised.value.line == line
    assert words in str(raised.value)


@pytest.mark.parametrize(
    "text",
    [
        "A=1\r\n  ; note \\\r\nB=2\r\n",  # CRLF: the backslash escapes the CR
        "# see C:\\\n\nB=2\n",  # a blank line after it
        "#x \\\n# y\nB=2\n",  # another comment after it
        "B=2\n# last \\\n",  # the file's last line
        "B=2\n# last \\",
    ],
)
def test_a_comment_ending_in_a_backslash_that_every_systemd_reads_alike_is_kept(text):
    # Checked with systemd 252's own load_env_file: B=2 alone, as here.
    assert parse_env_file(text) == {"B": "2"} | ({"A": "1"} if text.startswith("A=") else {})
