"""The route table: every endpoint relay serves, in one place."""

from __future__ import annotations

from aiohttp import web

from relay.api import (
    admin,
    attestation,
    auth,
    chat,
    chat_native,
    conversations,
    health,
    history,
    metrics,
    openapi,
    receipts,
)
from relay.api.expect import continue_when_read

# Routes that read a request body invite it only once relay is about to read it.
_READS_BODY = {"expect_handler": continue_when_read}


def setup_routes(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.get("/health", health.get_health, name="get_health", allow_head=True),
            web.get("/metrics", metrics.get_metrics, name="get_metrics"),
            web.get("/openapi.json", openapi.get_openapi, name="get_openapi"),
            web.get("/docs", openapi.get_docs, name="get_docs"),
            web.get("/docs/{asset}", openapi.get_docs_asset, name="get_docs_asset"),
            web.post("/auth/token", auth.create_token, name="create_token", **_READS_BODY),
            web.get("/v1/me", auth.get_me, name="get_me"),
            web.get("/v1/models", chat.list_models, name="list_models"),
            # Public ids may hold slashes (`org/model`); OpenAI's SDKs put them in the path as
            # they are.
            web.get("/v1/models/{model:.+}", chat.get_model, name="get_model"),
            web.post(
                "/v1/chat/completions",
                chat.create_chat_completion,
                name="create_chat_completion",
                **_READS_BODY,
            ),
            web.post("/v1/chat", chat_native.create_chat, name="create_chat", **_READS_BODY),
            web.get("/v1/history", history.list_history, name="list_history"),
            web.get("/v1/history/search", history.search_history, name="search_history"),
            web.get(
                "/v1/conversations", conversations.list_conversations, name="list_conversations"
            ),
            web.get(
                "/v1/conversations/{conversation_id}",
                conversations.get_conversation,
                name="get_conversation",
            ),
            web.delete(
                "/v1/conversations/{conversation_id}",
                conversations.delete_conversation,
                name="delete_conversation",
            ),
            web.get(
                "/v1/attestation/report",
                attestation.get_attestation_report,
                name="get_attestation_report",
            ),
            web.get("/v1/receipts/{receipt_id}", receipts.get_receipt, name="get_receipt"),
            web.get("/v1/signature/{receipt_id}", receipts.get_signature, name="get_signature"),
            web.get("/admin/receipts", receipts.list_receipts, name="list_receipts"),
            web.get("/admin/clients", admin.list_clients, name="list_clients"),
            web.post("/admin/clients", admin.create_client, name="create_client", **_READS_BODY),
            web.get("/admin/clients/{client_id}", admin.get_client, name="get_client"),
            web.patch(
                "/admin/clients/{client_id}",
                admin.update_client,
                name="update_client",
                **_READS_BODY,
            ),
            web.delete("/admin/clients/{client_id}", admin.delete_client, name="delete_client"),
            web.post(
                "/admin/clients/{client_id}/regenerate-key",
                admin.regenerate_client_key,
                name="regenerate_client_key",
                **_READS_BODY,
            ),
        ]
    )
