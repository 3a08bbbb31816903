"""Deterministic support-bot events (~350-byte JSON) shared by the load generators.

``bench.py`` writes them one per line to a file that both ``wrk`` (through
``wrk/post.lua``) and ``oha`` (``-Z``, one body per line) read, so every
system is driven with the same requests: round-robin over ``count`` events,
one conversation per event index modulo ``conversations``.
"""

import json

_TEXTS = [
    "Hi, my order has not arrived yet, can you check where it is?",
    "I would like to change the delivery address for my last order.",
    "The app crashes when I open the settings page on my phone.",
    "Can I get a refund for the second item, it arrived broken?",
    "How do I reset my password? The email never shows up.",
    "Is there a discount for yearly plans or for students?",
    "Thanks, that worked! One more question about invoices.",
    "My card was charged twice this month, please have a look.",
]

TARGET_BYTES = 350


def make_event(i: int, conversations: int = 1000) -> dict:
    conv = i % conversations
    event = {
        "conversation": f"conv-{conv:06d}",
        "user": f"user-{conv:06d}",
        "text": _TEXTS[i % len(_TEXTS)],
        "meta": {
            "channel": ("web", "whatsapp", "telegram", "email")[i % 4],
            "locale": "en-US",
            "ts": 1764300000 + i,
            "message_id": f"msg-{i:010d}",
            "client": "loadtest/1.0",
            "pad": "",
        },
    }
    size = len(json.dumps(event, separators=(",", ":")))
    event["meta"]["pad"] = "x" * max(0, TARGET_BYTES - size)
    return event


def make_bodies(count: int = 1000, conversations: int = 1000) -> list:
    return [json.dumps(make_event(i, conversations), separators=(",", ":")) for i in range(count)]


def write_bodies(path: str, count: int = 1000, conversations: int = 1000) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for body in make_bodies(count, conversations):
            f.write(body + "\n")
    return path


if __name__ == "__main__":
    print(make_bodies(1)[0])
    print(len(make_bodies(1)[0]), "bytes")
