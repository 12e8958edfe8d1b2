"""The built-in links that need no outside service (tag, sampler, jq_link, expire_vcon,
tag_router, diet) against a real private Redis and SeaweedFS. Each expected vCon is written
from vcon-server's code (vcon-dev/vcon-server b9b0381: conserver/links/<name>/__init__.py and
common/vcon.py), not from ours."""

from __future__ import annotations

import copy
import hashlib
import json
import random
import uuid as uuidlib

import pytest
import requests

from conserver.links import LinkFailed
from tests.links.http_stub import StubServer
from tests.links.helpers import call_vcon, runner


# --- tag ---------------------------------------------------------------------------------

def test_tag_adds_name_value_tags_in_a_json_tags_attachment(r):
    vcon = call_vcon()
    before = copy.deepcopy(vcon)
    out = runner(r, "links.tag", {"tags": ["Geddy", "Alex", "The Professor"]}).run(vcon)
    expected = copy.deepcopy(before)
    # Vcon.add_tag: {"purpose": "tags"} appended, then body = json.dumps(list), encoding json
    expected["attachments"].append(
        {"purpose": "tags", "body": '["Geddy:Geddy", "Alex:Alex", "The Professor:The Professor"]', "encoding": "json"})
    assert out == expected
    assert list(out["attachments"][-1]) == ["purpose", "body", "encoding"]
    assert vcon == before  # the chain's vCon is not changed in place


def test_tag_appends_to_a_legacy_tags_attachment(r):
    vcon = call_vcon()
    vcon["attachments"].append({"type": "tags", "encoding": "none", "body": ["vip:gold"]})
    out = runner(r, "links.tag", {"tags": ["urgent"]}).run(vcon)
    assert out["attachments"][-1] == {"type": "tags", "encoding": "json", "body": '["vip:gold", "urgent:urgent"]'}


def test_tag_without_tags_changes_nothing(r):
    vcon = call_vcon()
    assert runner(r, "links.tag", {}).run(vcon) == vcon


# --- sampler -----------------------------------------------------------------------------

def test_sampler_percentage_keeps_all_or_halts_all(r):
    keep_all = runner(r, "links.sampler", {"method": "percentage", "value": 100})
    keep_none = runner(r, "links.sampler", {"method": "percentage", "value": -1})
    for _ in range(20):
        vcon = call_vcon()
        assert keep_all.run(vcon) == vcon
        assert keep_none.run(vcon) is None


def test_sampler_seed_gives_vcon_servers_draw(r):
    for seed in range(10):
        random.seed(seed)  # what vcon-server does on every call with a seed
        kept = random.uniform(0, 100) <= 40
        vcon = call_vcon()
        out = runner(r, "links.sampler", {"method": "percentage", "value": 40, "seed": seed}).run(vcon)
        assert (out == vcon) if kept else (out is None)


def test_sampler_modulo_keeps_the_uuids_vcon_server_keeps(r):
    link = runner(r, "links.sampler", {"method": "modulo", "value": 3})
    uuids = [str(uuidlib.UUID(int=i * 7919, version=4)) for i in range(60)]
    kept = {u for u in uuids if link.run(call_vcon(u)) is not None}
    assert kept == {u for u in uuids if int(hashlib.sha256(u.encode()).hexdigest()[:8], 16) % 3 == 0}
    assert 0 < len(kept) < len(uuids)


def test_sampler_time_based_and_an_unknown_method(r):
    vcon = call_vcon()
    assert runner(r, "links.sampler", {"method": "time_based", "value": 1}).run(vcon) == vcon
    with pytest.raises(LinkFailed) as failed:
        runner(r, "links.sampler", {"method": "fibonacci"}).run(vcon)
    assert not failed.value.transient and "Unknown sampling method" in failed.value.detail


# --- jq_link -----------------------------------------------------------------------------

@pytest.mark.parametrize("expression, forward_matches, kept", [
    ('.dialog | length > 2', True, True),
    ('.dialog | length > 2', False, False),
    ('.subject == "refund"', True, False),
    ('.subject == "refund"', False, True),
    ('.attachments | map(select(.purpose == "nope")) | length', True, False),  # 0: falsy, as in Python
    ('.attachments[] | select(.purpose == "nope")', True, False),  # no result: no match
    ('.parties[0].tel', True, True),
])
def test_jq_link_forwards_by_python_truth_of_the_first_result(r, expression, forward_matches, kept):
    vcon = call_vcon()
    out = runner(r, "links.jq_link", {"filter": expression, "forward_matches": forward_matches}).run(vcon)
    assert (out == vcon) if kept else (out is None)


def test_jq_link_retries_string_filters_on_string_only_body_arrays(r):
    vcon = call_vcon()
    vcon["attachments"].append({"purpose": "tags", "body": [7, "vip:gold", {"x": 1}]})
    expression = '[.attachments[] | select(.purpose == "tags") | .body[] | startswith("vip")] | any'
    assert runner(r, "links.jq_link", {"filter": expression}).run(vcon) == vcon


def test_jq_link_halts_on_a_broken_filter(r):
    assert runner(r, "links.jq_link", {"filter": ".dialog[ | oops"}).run(call_vcon()) is None


# --- expire_vcon -------------------------------------------------------------------------

def test_expire_vcon_sets_the_body_ttl_and_changes_nothing(r):
    vcon = call_vcon()
    r.set(f"vcon:{vcon['uuid']}", json.dumps(vcon))
    assert runner(r, "links.expire_vcon", {"seconds": 120}).run(vcon) == vcon
    assert 100 < r.ttl(f"vcon:{vcon['uuid']}") <= 120


def test_expire_vcon_through_the_pipelines_hook(r):
    held = []
    vcon = call_vcon()
    link = runner(r, "links.expire_vcon", {}, set_body_ttl=lambda uuid, s: held.append((uuid, s)))
    link.run(vcon)
    assert held == [(vcon["uuid"], 86400)]  # vcon-server's default: a day
    assert r.exists(f"vcon:{vcon['uuid']}") == 0


# --- tag_router --------------------------------------------------------------------------

def _tagged(body, encoding="json"):
    vcon = call_vcon()
    vcon["attachments"].append({"purpose": "tags", "encoding": encoding, "body": body})
    return vcon


def test_tag_router_pushes_once_per_routed_tag_and_forwards(r):
    vcon = _tagged('["urgent:yes", "vip:gold", "other:x", "urgent:again"]')
    routes = {"urgent": "urgent_list", "vip": "vip_list", "unused": "unused_list"}
    assert runner(r, "links.tag_router", {"tag_routes": routes}).run(vcon) == vcon
    uid = vcon["uuid"].encode()
    assert r.lrange("urgent_list", 0, -1) == [uid, uid]  # a tag found twice is routed twice
    assert r.lrange("vip_list", 0, -1) == [uid]
    assert r.exists("unused_list") == 0


def test_tag_router_dict_body_and_no_forward(r):
    vcon = _tagged({"vip": "gold"}, encoding="none")
    assert runner(r, "links.tag_router", {"tag_routes": {"vip": "vips"}, "forward_original": False}).run(vcon) is None
    assert r.lrange("vips", 0, -1) == [vcon["uuid"].encode()]


def test_tag_router_without_tags_or_routes(r):
    vcon = call_vcon()
    assert runner(r, "links.tag_router", {"tag_routes": {"vip": "vips"}}).run(vcon) == vcon
    assert runner(r, "links.tag_router", {"tag_routes": {"vip": "vips"}, "forward_original": False}).run(vcon) is None
    assert runner(r, "links.tag_router", {"forward_original": False}).run(_tagged('["vip:x"]')) is not None
    assert r.exists("vips") == 0


# --- diet --------------------------------------------------------------------------------

def test_diet_removes_bodies_analysis_attachment_types_and_system_prompts(r):
    vcon = call_vcon()
    out = runner(r, "links.diet", {"remove_dialog_body": True, "remove_analysis": True,
                                   "remove_attachment_types": ["image/png"], "remove_system_prompts": True}).run(vcon)
    expected = copy.deepcopy(vcon)
    expected["dialog"][0]["body"] = ""
    expected["dialog"][1]["body"] = ""
    del expected["dialog"][1]["meta"]["system_prompt"]
    del expected["analysis"]
    expected["attachments"] = expected["attachments"][:1]
    assert out == expected


def test_diet_posts_media_and_keeps_its_url(r):
    def answer(request):
        return (200, {"url": f"https://media.example.com/{request.body['dialog_id'] or 'none'}"}) \
            if request.body["content"] != "Thanks for calling" else (404, {"error": "no"})
    with StubServer(answer) as stub:
        vcon = call_vcon()
        out = runner(r, "links.diet", {"remove_dialog_body": True, "post_media_to_url": stub.url + "/media"}).run(vcon)
        assert [req.body for req in stub.received("/media")] == [
            {"content": vcon["dialog"][0]["body"], "vcon_uuid": vcon["uuid"], "dialog_id": "d0"},
            {"content": "Thanks for calling", "vcon_uuid": vcon["uuid"], "dialog_id": ""}]
    assert out["dialog"][0] == {**vcon["dialog"][0], "body": "https://media.example.com/d0", "body_type": "url"}
    assert out["dialog"][1]["body"] == "" and "body_type" not in out["dialog"][1]  # 404: emptied, as vcon-server
    assert out["dialog"][2] == vcon["dialog"][2]


def test_diet_keeps_the_body_when_the_media_store_is_down(r):
    # retries: 0 so the first failure shows at once (the retry path has its own tests)
    with StubServer(lambda req: (503, {"error": "busy"})) as stub:
        link = runner(r, "links.diet", {"remove_dialog_body": True, "post_media_to_url": stub.url,
                                        "conserver": {"retries": 0}})
        with pytest.raises(LinkFailed) as failed:
            link.run(call_vcon())
    assert failed.value.transient and "503" in failed.value.detail


def test_diet_moves_dialog_bodies_to_s3(r, s3_server, monkeypatch):
    import boto3

    from conserver.links import diet
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)  # boto3's own setting; diet has no option
    diet._s3_client.cache_clear()
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, aws_access_key_id=s3_server.access_key,
                      aws_secret_access_key=s3_server.secret_key, region_name=s3_server.region)
    s3.create_bucket(Bucket="diet-bodies")
    vcon = call_vcon()
    out = runner(r, "links.diet", {"remove_dialog_body": True, "s3_bucket": "diet-bodies", "s3_path": "calls",
                                   "aws_access_key_id": s3_server.access_key,
                                   "aws_secret_access_key": s3_server.secret_key}).run(vcon)
    diet._s3_client.cache_clear()
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="diet-bodies", Prefix="calls/")["Contents"])
    assert len(keys) == 2
    assert keys[0].startswith(f"calls/{vcon['uuid']}/") and keys[0].endswith(".txt")
    assert any(k.startswith(f"calls/{vcon['uuid']}/d0_") for k in keys)
    for dialog, original in zip(out["dialog"][:2], vcon["dialog"][:2]):
        assert dialog["body_type"] == "url"
        assert requests.get(dialog["body"], timeout=10).text == original["body"]  # the presigned URL works
    assert out["dialog"][2] == vcon["dialog"][2]
