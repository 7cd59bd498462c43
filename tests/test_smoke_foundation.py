from tests.api_calls import bearer, client_with_token


async def test_key_to_token_to_me(http):
    client, token = await client_with_token(http, name="phone app", scopes=["chat"])
    response = await http.get("/v1/me", headers=bearer(token))
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["id"] == client["id"]
    assert body["name"] == "phone app"
    assert body["scopes"] == ["chat"]
