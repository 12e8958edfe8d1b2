"""An OpenAI-compatible chat-completions endpoint, chosen from a link's options as
vcon-server's ``get_openai_client`` chooses its client (common/lib/openai_client.py, b9b0381),
called with plain HTTP through the link's session (its timeout and rate limit apply):

1. ``LITELLM_PROXY_URL`` + ``LITELLM_MASTER_KEY``: ``{proxy}/chat/completions``, the vendor
   inferred from the model name (``claude-*`` -> anthropic, ...) or ``litellm``;
2. ``AZURE_OPENAI_ENDPOINT`` + ``AZURE_OPENAI_API_KEY`` (+ ``AZURE_OPENAI_API_VERSION``):
   ``{endpoint}/openai/deployments/{model}/chat/completions``, vendor ``azure``;
3. ``OPENAI_API_KEY`` / ``openai_api_key`` / ``api_key``, else the environment's
   ``OPENAI_API_KEY``: ``{base_url}/chat/completions``, vendor ``openai``. ``base_url`` is an
   option of conserver's, else ``OPENAI_BASE_URL`` (as the OpenAI SDK reads it), else
   https://api.openai.com/v1: any OpenAI-compatible server (vLLM, Ollama, ...) works.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ChatEndpoint", "chat_completion", "resolve_endpoint"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_AZURE_API_VERSION = "2024-10-21"

_PREFIX_VENDORS = {"openai": "openai", "azure": "azure", "anthropic": "anthropic", "google": "google",
                   "vertex_ai": "google", "mistral": "mistral", "meta": "meta", "cohere": "cohere",
                   "groq": "groq", "bedrock": "bedrock"}
_NAME_VENDORS = (("claude", "anthropic"), ("gpt-", "openai"), ("o1", "openai"), ("o3", "openai"),
                 ("chatgpt", "openai"), ("gemini", "google"), ("mistral", "mistral"), ("mixtral", "mistral"),
                 ("llama", "meta"), ("meta-llama", "meta"), ("command", "cohere"))


@dataclass(frozen=True)
class ChatEndpoint:
    url: str
    headers: dict
    vendor: str  # what the analysis entry's ``vendor`` says


def _opt(opts: Mapping[str, Any], *names: str) -> str:
    for name in names:
        value = (opts.get(name) or "").strip()
        if value:
            return value
    return ""


def _vendor_of_model(model: str) -> str | None:
    parts = (model or "").lower().split("/")
    if len(parts) > 1 and parts[0] in _PREFIX_VENDORS:
        return _PREFIX_VENDORS[parts[0]]
    return next((vendor for prefix, vendor in _NAME_VENDORS if parts[-1].startswith(prefix)), None)


def resolve_endpoint(opts: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> ChatEndpoint:
    proxy, master_key = _opt(opts, "LITELLM_PROXY_URL").rstrip("/"), _opt(opts, "LITELLM_MASTER_KEY")
    if proxy and master_key:
        return ChatEndpoint(f"{proxy}/chat/completions", {"Authorization": f"Bearer {master_key}"},
                            _vendor_of_model(opts.get("model") or "") or "litellm")
    azure, azure_key = _opt(opts, "AZURE_OPENAI_ENDPOINT").rstrip("/"), _opt(opts, "AZURE_OPENAI_API_KEY")
    if azure and azure_key:
        version = opts.get("AZURE_OPENAI_API_VERSION") or DEFAULT_AZURE_API_VERSION
        return ChatEndpoint(f"{azure}/openai/deployments/{opts['model']}/chat/completions?api-version={version}",
                            {"api-key": azure_key}, "azure")
    key = _opt(opts, "OPENAI_API_KEY", "openai_api_key", "api_key") or environ.get("OPENAI_API_KEY", "").strip()
    if not key:
        raise ValueError("Set LITELLM_PROXY_URL + LITELLM_MASTER_KEY, or AZURE_OPENAI_ENDPOINT + "
                         "AZURE_OPENAI_API_KEY, or OPENAI_API_KEY (or api_key) in the options or the environment")
    base = (_opt(opts, "base_url") or environ.get("OPENAI_BASE_URL", "").strip() or DEFAULT_BASE_URL).rstrip("/")
    headers = {"Authorization": f"Bearer {key}"}
    organization, project = _opt(opts, "organization", "organization_key"), _opt(opts, "project", "project_key")
    if organization:
        headers["OpenAI-Organization"] = organization
    if project:
        headers["OpenAI-Project"] = project
    return ChatEndpoint(f"{base}/chat/completions", headers, "openai")


def chat_completion(ctx, endpoint: ChatEndpoint, model: str, messages: list, temperature: float) -> tuple[Any, dict]:
    """(the first choice's message content, the usage object) of one completion. An answer
    of 400 or more raises requests.HTTPError (429 and 5xx are transient, see runner.py)."""
    response = ctx.http().post(endpoint.url, headers=endpoint.headers,
                               json={"model": model, "messages": messages, "temperature": temperature})
    if response.status_code >= 400:
        response.raise_for_status()
    data = response.json()
    return data["choices"][0]["message"]["content"], data.get("usage") or {}
