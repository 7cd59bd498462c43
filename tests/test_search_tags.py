"""Search finds words inside what PostgreSQL's parser takes for markup (`Vec<String>`),
in stored messages, in queries and in snippets, and in rows written before 007."""

import shutil

import pytest

from relay.stores import messages as message_store
from relay.stores.migrations import migrations_dir
from tests.api_calls import bearer, client_with_token
from tests.history_calls import chat, query


@pytest.fixture
async def http(make_client, make_settings):
    return await make_client(make_settings(rate_limits=False))


async def search(http, token, q):
    response = await http.get("/v1/history/search", params={"q": q}, headers=bearer(token))
    assert response.status == 200, await response.text()
    return (await response.json())["data"]


# (message, query, what its snippet shows: markup as text, the word marked)
TAGGED = [
    ("fn names() -> Vec<String> { todo!() }", "String", "Vec&lt;<mark>String</mark>&gt;"),
    (
        '<div class="x">penguin</div> renders a bird',
        "class",
        "<mark>class</mark>=&quot;x&quot;&gt;penguin&lt;/div&gt;",
    ),
    ("if a<b and c>d then swap", "b", "<mark>b</mark> and c&gt;d"),
    ("return a List<Integer> of ids", "Integer", "List&lt;<mark>Integer</mark>"),
    ("<!-- a hidden comment --> after", "hidden", "<mark>hidden</mark> comment --&gt;"),
    ("HashMap<String, Vec<u8>> maps", "u8", "Vec&lt;<mark>u8</mark>&gt;&gt;"),
]


@pytest.mark.parametrize(("content", "q", "marked"), TAGGED)
async def test_words_inside_tag_like_text_are_found_and_marked(http, content, q, marked):
    _, token = await client_with_token(http)
    await chat(http, token, content)
    await chat(http, token, "something unrelated")

    found = await search(http, token, q)

    assert [m["content"] for m in found] == [content]
    snippet = found[0]["snippet"]
    assert marked in snippet
    # Markup in the message is still text in the snippet, and no mark is forged.
    text = snippet.replace("<mark>", "").replace("</mark>", "")
    assert not any(char in text for char in '<>"')


@pytest.mark.parametrize(
    "q", ["Vec<String>", '"Vec<String>"', "<String>", "vec<string>", "Vec<String> -bytes"]
)
async def test_a_query_written_with_a_tag_finds_what_it_names(http, q):
    _, token = await client_with_token(http)
    await chat(http, token, "fn names() -> Vec<String>")
    await chat(http, token, "a Vec<u8> of bytes")

    found = await search(http, token, q)

    assert [m["content"] for m in found] == ["fn names() -> Vec<String>"]
    assert "&lt;<mark>String</mark>" in found[0]["snippet"]


async def test_a_phrase_must_be_in_order_across_the_brackets(http):
    _, token = await client_with_token(http)
    await chat(http, token, "String<Vec> is backwards")

    assert await search(http, token, '"Vec<String>"') == []
    assert [m["content"] for m in await search(http, token, "Vec<String>")] == [
        "String<Vec> is backwards"
    ]


async def test_comparisons_and_operators_read_as_before(http):
    _, token = await client_with_token(http)
    await chat(http, token, "penguins: 3 < 4, x<<2 and y>>3, mail <pingu@example.com>")

    for q in ["penguin", "pingu@example.com", "3 < 4", "x<<2"]:
        found = await search(http, token, q)
        assert len(found) == 1, q
    assert "<mark>x</mark>&lt;&lt;<mark>2</mark>" in found[0]["snippet"]


async def test_the_stored_vector_reads_the_text_the_query_and_snippet_read(http, database_url):
    # The migration's expression and relay's query and snippet prepare the text one
    # way; a change to one of them alone would find words the snippet cannot mark.
    _, token = await client_with_token(http)
    await chat(http, token, "Vec<String> \x01glued\x02 <b>bold</b> a<b and c>d <!-- x -->")
    [row] = await query(
        database_url,
        "SELECT search = to_tsvector('english', translate(left(content, 100000), %s, ' '))"
        " AS same, search = to_tsvector('english', translate(left(content, 100000), %s, %s))"
        " AS as_headline FROM messages WHERE role = 'user'",
        (message_store._TAKEN, message_store._TAKEN, message_store._LT),
    )
    assert row == {"same": True, "as_headline": True}


async def test_rows_written_before_the_migration_are_found_after_it(
    empty_database_url, make_client, make_settings, tmp_path, monkeypatch
):
    before = tmp_path / "sql"
    before.mkdir()
    for path in sorted(migrations_dir().glob("*.sql")):
        if int(path.name[:3]) != 7:  # the columns today's code reads, 007's vectors aside
            shutil.copy(path, before)
    settings = make_settings(rate_limits=False, database_url=empty_database_url)
    # A relay of the release before 007: its vectors, written through its API.
    monkeypatch.setattr("relay.stores.migrations.migrations_dir", lambda: before)
    old = await make_client(settings)
    _, token = await client_with_token(old)
    await chat(old, token, "fn names() -> Vec<String>")
    await chat(old, token, '<div class="x">penguin</div>')
    # What 007 is for: these words were left out of the vectors stored then.
    assert await search(old, token, "String") == await search(old, token, "class") == []
    await old.close()
    monkeypatch.undo()

    new = await make_client(settings)  # its start-up applies 007

    assert [m["content"] for m in await search(new, token, "String")] == [
        "fn names() -> Vec<String>"
    ]
    [found] = await search(new, token, "class")
    assert "<mark>class</mark>=&quot;x&quot;&gt;penguin&lt;/div" in found["snippet"]
    indexes = await query(
        empty_database_url,
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'messages_search_idx'",
    )
    assert [row["indexdef"] for row in indexes] == [
        "CREATE INDEX messages_search_idx ON public.messages USING gin (search)"
    ]
