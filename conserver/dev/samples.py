"""Sample vCons for the demo, `conserver enqueue --sample`, the tests and the benchmarks."""

from __future__ import annotations

import random
import uuid as uuid_mod
from datetime import datetime, timedelta, timezone

_UTC = timezone.utc

_FIRST = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jo", "Kofi", "Lena")
_LAST = ("Silva", "Okafor", "Nguyen", "Schmidt", "Haddad", "Kowalski", "Tanaka", "Moreau", "Ruiz")
_TOPICS = ("billing question", "password reset", "late delivery", "upgrade plan", "cancel subscription",
           "router not working", "refund request", "change address")
_LINES = (
    "Hi, thanks for calling, how can I help you today?",
    "I was charged twice on my last invoice and I would like it fixed.",
    "Let me pull up your account, can you confirm the email on file?",
    "Sure, it is the one ending in example dot com.",
    "I can see the duplicate charge; I have issued a refund for it now.",
    "Great, how long will that take to show up?",
    "Usually three to five business days. Anything else I can do?",
    "No, that is all, thank you very much.",
)


def sample_vcon(rng: random.Random, tenant: str | None = None) -> dict:
    """A realistic vCon of about 1.5 KB: 2-3 parties, text and recording dialogs, analysis
    (summary, sentiment, transcript) and a tenant attachment (``tenant`` or a random one)."""
    uid = str(uuid_mod.UUID(int=rng.getrandbits(128), version=4))
    start = datetime(2024, 1, 1, tzinfo=_UTC) + timedelta(seconds=rng.randrange(365 * 86400))
    tenant = tenant or f"tenant-{rng.randint(1, 5)}"
    customer = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    agent = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    parties = [
        {"tel": f"+1{rng.randrange(2000000000, 9999999999)}", "name": customer, "role": "customer"},
        {"mailto": f"{agent.split()[0].lower()}@support.example.com", "name": agent, "role": "agent"},
    ]
    if rng.random() < 0.5:
        parties.append({"tel": f"+1{rng.randrange(2000000000, 9999999999)}", "name": "Supervisor", "role": "agent"})
    duration = rng.randint(30, 900)
    lines = _LINES[: rng.randint(4, len(_LINES))]
    transcript = " ".join(lines)
    dialog = [
        {"type": "recording", "start": start.isoformat(), "duration": duration, "parties": [0, 1],
         "mimetype": "audio/x-wav", "url": f"https://media.example.com/{uid}.wav", "alg": "SHA-512",
         "signature": "".join(rng.choice("0123456789abcdef") for _ in range(32))},
        {"type": "text", "start": (start + timedelta(seconds=duration)).isoformat(), "parties": [1, 0],
         "mimetype": "text/plain", "body": rng.choice(_LINES)},
    ]
    analysis = [
        {"type": "summary", "dialog": 0, "vendor": "openai", "encoding": "none",
         "body": f"The customer called about a {rng.choice(_TOPICS)}; the agent resolved it."},
        {"type": "sentiment", "dialog": 0, "vendor": "openai", "encoding": "json",
         "body": {"score": round(rng.uniform(-1, 1), 3), "label": rng.choice(("positive", "neutral", "negative"))}},
        {"type": "transcript", "dialog": 0, "vendor": "deepgram", "encoding": "none", "body": transcript},
    ]
    return {
        "vcon": "0.0.1",
        "uuid": uid,
        "created_at": start.isoformat(),
        "subject": rng.choice(_TOPICS),
        "parties": parties,
        "dialog": dialog,
        "analysis": analysis,
        "attachments": [{"purpose": "tenant", "type": "tenant", "encoding": "json", "body": {"id": tenant}}],
    }
