"""``links.diet``: slim a vCon down: dialog bodies out (moved to S3 or to a media URL, or
just emptied), analysis out, attachments of some ``mime_type`` out, ``system_prompt`` keys out.

vcon-server: conserver/links/diet/__init__.py (b9b0381), the same options and the same
edits: a moved body becomes the URL with ``body_type: "url"``, the S3 key is
``[s3_path/]{uuid}/[{dialog id}_]{uuid4}.txt`` with a presigned GET URL
(``presigned_url_expiration``, default 3600 s); attachments are matched on ``mime_type``.
Differences, so that a recording is never thrown away by a passing failure: where
vcon-server empties the body when the S3 upload fails, or when the media URL cannot be
reached or answers 429/5xx, here the link fails (the vCon keeps its body; a 429/5xx or a
connection error is transient). Other non-200 answers empty the body, as there. Empty AWS
credentials fall back to boto3's usual chain (environment, profile, role).
"""

from __future__ import annotations

import functools
import uuid as uuidlib

import boto3

default_options = {
    "remove_dialog_body": False,
    "post_media_to_url": "",
    "remove_analysis": False,
    "remove_attachment_types": [],
    "remove_system_prompts": False,
    "s3_bucket": "",
    "s3_path": "",
    "aws_access_key_id": "",
    "aws_secret_access_key": "",
    "aws_region": "us-east-1",
    "presigned_url_expiration": None,
}
default_policy = {"rate_limit_per": "request"}


@functools.lru_cache(maxsize=8)
def _s3_client(access_key: str, secret_key: str, region: str):
    # made on first use in a worker (after fork); boto3 clients are thread-safe
    return boto3.session.Session().client("s3", aws_access_key_id=access_key or None,
                                          aws_secret_access_key=secret_key or None, region_name=region)


def _upload(content, vcon_uuid: str, dialog_id, options: dict) -> str:
    s3 = _s3_client(options["aws_access_key_id"], options["aws_secret_access_key"],
                    options.get("aws_region") or "us-east-1")
    unique = str(uuidlib.uuid4())
    key = f"{vcon_uuid}/{f'{dialog_id}_{unique}.txt' if dialog_id else f'{unique}.txt'}"
    if options.get("s3_path"):
        key = f"{options['s3_path']}/{key}"
    bucket = options["s3_bucket"]
    s3.put_object(Bucket=bucket, Key=key, ContentType="text/plain",
                  Body=content.encode("utf-8") if isinstance(content, str) else content)
    expiration = options.get("presigned_url_expiration")
    return s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                     ExpiresIn=3600 if expiration is None else expiration)


def _post_media(ctx, content, vcon_uuid: str, dialog_id, url: str) -> str | None:
    response = ctx.http().post(url, json={"content": content, "vcon_uuid": vcon_uuid, "dialog_id": dialog_id})
    if response.status_code == 429 or response.status_code >= 500:
        response.raise_for_status()
    if response.status_code != 200:
        ctx.log.error("diet: posting media of %s to %s: %s", vcon_uuid, url, response.status_code)
        return None
    try:
        return response.json().get("url")
    except (ValueError, AttributeError) as exc:
        ctx.log.error("diet: the media URL's answer for %s is not a JSON object: %s", vcon_uuid, exc)
        return None


def _remove_system_prompts(obj) -> None:
    if isinstance(obj, dict):
        obj.pop("system_prompt", None)
        children = obj.values()
    elif isinstance(obj, list):
        children = obj
    else:
        return
    for child in children:
        _remove_system_prompts(child)


def run(vcon: dict, ctx, options: dict) -> dict:
    uuid = vcon["uuid"]
    dialogs = (vcon.get("dialog") or []) if options["remove_dialog_body"] else []
    for dialog in dialogs:
        if "body" not in dialog:
            continue
        body, dialog_id = dialog.get("body"), dialog.get("id", "")
        moved = None
        if options.get("s3_bucket") and body:
            moved = _upload(body, uuid, dialog_id, options)
        elif options.get("post_media_to_url") and body:
            moved = _post_media(ctx, body, uuid, dialog_id, options["post_media_to_url"])
        if moved:
            dialog["body"], dialog["body_type"] = moved, "url"
        else:
            dialog["body"] = ""
    if options["remove_analysis"] and "analysis" in vcon:
        del vcon["analysis"]
    if options["remove_attachment_types"] and "attachments" in vcon:
        vcon["attachments"] = [a for a in vcon["attachments"]
                               if a.get("mime_type") not in options["remove_attachment_types"]]
    if options["remove_system_prompts"]:
        _remove_system_prompts(vcon)
    return vcon

