"""``links.analyze``: for each dialog that has a source analysis (a transcript) and not yet
an analysis of ``analysis_type``, ask a chat model and append its answer as an analysis.

vcon-server: conserver/links/analyze/__init__.py (b9b0381), the same options, filters
(``only_if``, ``sampling_rate``), messages (``system_prompt``; ``prompt + "\\n\\n" + text``)
and entry::

    {"type": analysis_type, "dialog": i, "vendor": "openai", "body": answer,
     "encoding": "none", "vendor_schema": {"model": model, "prompt": prompt}}

The endpoint is any OpenAI-compatible one (chat_api.py). vcon-server tries a completion 6
times with backoff (tenacity); here the link's policy does it, ``retries: 5`` by default,
each request taking a token of the rate limit. An unreachable ``send_ai_usage_data_to_url``
is logged and does not fail the analysis.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone

from conserver.links.chat_api import chat_completion, resolve_endpoint
from conserver.links.parts import add_analysis, decoded_body, get_path

default_options = {
    "prompt": "",
    "analysis_type": "summary",
    "model": "gpt-3.5-turbo-16k",
    "sampling_rate": 1,
    "temperature": 0,
    "system_prompt": "You are a helpful assistant.",
    "source": {"analysis_type": "transcript", "text_location": "body.paragraphs.transcript"},
}
default_policy = {"retries": 5, "rate_limit_per": "request"}


def is_included(options: dict, vcon: dict, log) -> bool:
    """lib/links/filters.py ``is_included``: ``only_if: {section, purpose|type, includes}``."""
    only_if = options.get("only_if")
    if not only_if:
        return True
    try:
        section, includes = only_if["section"], only_if["includes"]
        target = only_if.get("purpose") or only_if.get("type")
        for element in vcon[section]:
            if section == "attachments":
                if element.get("purpose") != target and element.get("type") != target:
                    continue
            elif element.get("type") != target:
                continue
            if target == "tags":
                tags = decoded_body(element)
                if isinstance(tags, list) and includes in tags:
                    return True
                continue
            body = element.get("body")
            if isinstance(body, str) and includes in body:
                return True
    except Exception as exc:
        log.error("analyze: error checking only_if: %s", exc)
    return False


def _analysis_for(vcon: dict, index: int, analysis_type) -> dict | None:
    return next((a for a in vcon.get("analysis") or [] if a.get("dialog") == index and a.get("type") == analysis_type),
                None)


def _track_usage(ctx, options: dict, vcon_uuid: str, usage: dict) -> None:
    url = options.get("send_ai_usage_data_to_url")
    if not url:
        return
    data = {"created_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"), "record_id": vcon_uuid,
            "type": "VCON_PROCESSING", "sub_type": "ANALYZE", "unit_type": "tokens",
            "input_units": usage.get("prompt_tokens"), "output_units": usage.get("completion_tokens"),
            "ai_model": options["model"]}
    try:
        response = ctx.http().post(url, json=data, timeout=30,
                                   headers={"Authorization": f"Bearer {options.get('ai_usage_api_token', '')}"})
        if not response.ok:
            ctx.log.error("analyze: AI usage tracking answered %s", response.status_code)
    except Exception as exc:  # tracking is not the vCon's business: never fail an analysis for it
        ctx.log.error("analyze: AI usage tracking failed: %s", exc)


def run(vcon: dict, ctx, options: dict) -> dict:
    if not is_included(options, vcon, ctx.log):
        return vcon
    if options.get("sampling_rate") and not random.random() < options["sampling_rate"]:
        return vcon
    endpoint = resolve_endpoint(options)
    source_type = get_path(options, "source.analysis_type")
    text_location = get_path(options, "source.text_location")
    for index, _dialog in enumerate(vcon.get("dialog") or []):
        source = _analysis_for(vcon, index, source_type)
        text = get_path({**source, "body": decoded_body(source)}, text_location) if source else None
        if not text:
            ctx.log.warning("analyze: no %s text for dialog %s of vCon %s", source_type, index, vcon["uuid"])
            continue
        if _analysis_for(vcon, index, options["analysis_type"]):
            continue
        messages = [{"role": "system", "content": options.get("system_prompt", "You are a helpful assistant.")},
                    {"role": "user", "content": options.get("prompt", "") + "\n\n" + text}]
        answer, usage = chat_completion(ctx, endpoint, options["model"], messages, options["temperature"])
        _track_usage(ctx, options, vcon["uuid"], usage)
        add_analysis(vcon, type=options["analysis_type"], dialog=index, vendor=endpoint.vendor, body=answer,
                     encoding="none", extra={"vendor_schema": {"model": options["model"], "prompt": options["prompt"]}})
    return vcon
