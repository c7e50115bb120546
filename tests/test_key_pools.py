"""Gateway key pools: spread, bench, rotation of key files, per-model keys, and no key shown anywhere.

The choice and the bench are tested on a fake clock; the rest sends real HTTP over loopback to
the simulator with the real openai SDK, the simulator holding per-key quotas and model rules.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import openai
import pytest
from helpers import OPENAI_KEY, root_output

import yibu_middleware
from yibu_middleware.core.keys import KeyRing, LocalBench, key_refusal, make_key, parse_key_line
from yibu_middleware.errors import ConfigError
from yibu_middleware.runtime import current
from yibu_middleware.settings import load_settings
from yibu_middleware.simulator import GatewaySimulator

YIBU = str(Path(sys.executable).with_name("yibu"))
# Fake keys only.
KEY_A = "sk-pool-a-0123456789abcdefghijklmnopq"
KEY_B = "sk-pool-b-0123456789abcdefghijklmnopq"
KEY_C = "sk-pool-c-0123456789abcdefghijklmnopq"
KEYS = (KEY_A, KEY_B, KEY_C)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pool_gateway() -> GatewaySimulator:
    simulator = GatewaySimulator(accepted_keys=set(KEYS))
    for name in ("a", "b"):
        simulator.add_node(name)
    with simulator:
        yield simulator


def install(simulator: GatewaySimulator, **settings: object) -> None:
    yibu_middleware.install({"nodes": [node.base_url for node in simulator.nodes], **settings})


def client() -> openai.OpenAI:
    return openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)


def chat(model: str = "gpt-4o-mini") -> openai.types.chat.ChatCompletion:
    return client().chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def keys_sent(simulator: GatewaySimulator) -> list[str | None]:
    return [record.key for record in simulator.records if record.path == "/v1/chat/completions"]


# --- the choice, on a fake clock -----------------------------------------------------------------


def test_keys_are_spread_by_weight() -> None:
    ring = KeyRing([make_key(KEY_A, 3), make_key(KEY_B, 1)], {}, 60, clock=Clock())
    chosen = Counter(ring.choose("m").value.decode() for _ in range(400))
    assert chosen == {KEY_A: 300, KEY_B: 100}


def test_a_refused_key_is_benched_until_bench_seconds_pass() -> None:
    clock = Clock()
    a, b = make_key(KEY_A), make_key(KEY_B)
    ring = KeyRing([a, b], {}, 60, clock=clock)
    ring.refused(a, "quota: insufficient_user_quota")
    assert {ring.choose("m") for _ in range(10)} == {b}
    clock.now += 59
    assert {ring.choose("m") for _ in range(10)} == {b}
    clock.now += 2
    assert {ring.choose("m") for _ in range(10)} == {a, b}


def test_with_every_key_benched_the_one_due_first_is_sent_and_ready_says_none() -> None:
    clock = Clock()
    a, b = make_key(KEY_A), make_key(KEY_B)
    ring = KeyRing([a, b], {}, 60, clock=clock)
    ring.refused(a, "quota: insufficient_user_quota")
    clock.now += 10
    ring.refused(b, "rejected: 401")
    assert ring.ready("m") is None
    assert ring.choose("m") == a  # back first: the gateway answers for itself
    assert ring.choose("m", exclude=[a.id, b.id]) is None
    text = ring.explain_all_benched("m")
    assert KEY_A not in text and KEY_B not in text
    assert (
        text.startswith("Every")
        and "insufficient_user_quota, back in 50 s" in text
        and "keys.bench_seconds (60 s)" in text
    )


def test_keys_by_model_first_matching_pattern_else_the_default_pool() -> None:
    a, b, c = make_key(KEY_A), make_key(KEY_B), make_key(KEY_C)
    ring = KeyRing([a], {"claude-*": [b], "*": [c]}, 60, clock=Clock())
    assert ring.choose("claude-sonnet-4") == b
    assert ring.choose("gpt-4o") == c
    ring2 = KeyRing([a], {"claude-*": [b]}, 60, clock=Clock())
    assert ring2.choose("gpt-4o") == a
    assert ring2.choose(None) == a


def test_the_bench_is_a_seam_keyed_by_fingerprint_not_by_key() -> None:
    bench = LocalBench()
    ring = KeyRing([make_key(KEY_A), make_key(KEY_B)], {}, 60, bench=bench, clock=Clock())
    ring.refused(ring.choose("m"), "quota: insufficient_quota")
    assert all(KEY_A not in name and KEY_B not in name for name in bench._benched)
    assert all(name.startswith("k") and len(name) == 13 for name in bench._benched)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (403, "insufficient_user_quota", "quota: insufficient_user_quota"),
        (403, "pre_consume_token_quota_failed", "quota: pre_consume_token_quota_failed"),
        (429, "insufficient_quota", "quota: insufficient_quota"),
        (401, "invalid_api_key", "rejected: 401 invalid_api_key"),
        (401, None, "rejected: 401"),
        (403, None, None),  # a model or IP refusal: not the key's fault
        (429, "rate_limit_exceeded", None),
        (400, None, None),
    ],
)
def test_which_refusals_bench_a_key(status: int, code: str | None, expected: str | None) -> None:
    assert key_refusal(status, code) == expected


def test_key_lines_take_a_weight_and_refuse_bad_input_without_quoting_the_key() -> None:
    assert parse_key_line(f"  {KEY_A} 2.5 ", "x").weight == 2.5
    assert parse_key_line("# a comment", "x") is None
    with pytest.raises(ValueError, match="weight") as caught:
        parse_key_line(f"{KEY_A} -1", "api_keys[0]")
    assert KEY_A not in str(caught.value) and "api_keys[0]" in str(caught.value)


# --- settings ------------------------------------------------------------------------------------


def test_api_keys_from_env_comma_or_json_with_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBU_API_KEYS", f"{KEY_A}, {KEY_B} 3")
    assert [key.get_secret_value() for key in load_settings().api_keys] == [KEY_A, f"{KEY_B} 3"]
    monkeypatch.setenv("YIBU_API_KEYS", json.dumps([KEY_A, {"key": KEY_B, "weight": 2}]))
    assert [key.get_secret_value() for key in load_settings().api_keys] == [KEY_A, f"{KEY_B} 2"]


def test_bad_pool_settings_name_the_place_never_the_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("YIBU_API_KEYS", json.dumps([KEY_A, f"{KEY_B}\u00e9"]))
    monkeypatch.setenv("YIBU_KEYS_BY_MODEL", json.dumps({"claude-*": []}))
    monkeypatch.setenv("YIBU_API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    text = str(caught.value)
    assert "api_keys[1]" in text and "non-ASCII" in text
    assert "keys_by_model['claude-*'] holds no key" in text
    assert "api_key_file" in text and "cannot be read" in text
    assert KEY_A[:-4] not in text and KEY_B[:-4] not in text


def test_keys_by_model_alone_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="no key is left for the models it does not match"):
        yibu_middleware.install({"keys_by_model": {"claude-*": [KEY_A]}})


def test_one_key_makes_no_pool() -> None:
    yibu_middleware.install({"api_key": KEY_A})
    runtime = current()
    assert runtime is not None and runtime.keys is None and runtime.key_files is None


# --- through the simulator, with the openai SDK --------------------------------------------------


def test_a_key_exhausted_mid_run_moves_traffic_to_the_next_key_with_no_failed_call(
    pool_gateway: GatewaySimulator,
) -> None:
    pool_gateway.set_key_quota(KEY_A, 5)
    install(pool_gateway, api_keys=[KEY_A, KEY_B])
    for _ in range(20):
        assert chat().choices[0].message.content  # no call fails
    sent = keys_sent(pool_gateway)
    refused = [r for r in pool_gateway.records if r.status == 403]
    assert len(refused) == 1 and refused[0].key == KEY_A  # met once, then benched
    assert sent.count(KEY_A) == 6  # its 5 calls, and the one refused
    assert sent.count(KEY_B) == 15
    statuses = [record.status for record in pool_gateway.records]
    assert KEY_A not in sent[statuses.index(403) + 1 :]  # benched: not sent again within keys.bench_seconds


def test_a_401_benches_the_key_and_the_call_goes_on_with_the_next(pool_gateway: GatewaySimulator) -> None:
    revoked = "sk-pool-revoked-0123456789abcdefghijk"
    install(pool_gateway, api_keys=[revoked, KEY_B])
    for _ in range(4):
        chat()
    sent = keys_sent(pool_gateway)
    assert sent.count(revoked) == 1 and sent.count(KEY_B) == 4


def test_every_key_benched_gives_the_gateways_own_error_explained(pool_gateway: GatewaySimulator) -> None:
    pool_gateway.set_key_quota(KEY_A, 0)
    pool_gateway.set_key_quota(KEY_B, 0)
    install(pool_gateway, api_keys=[KEY_A, KEY_B])
    with root_output(logging.WARNING) as logged, pytest.raises(openai.PermissionDeniedError) as caught:
        chat()
    message = str(caught.value)
    assert caught.value.status_code == 403
    assert "user quota is not enough" in message  # the gateway's own words
    assert "Every gateway key of the default pool was refused" in message
    assert "keys.bench_seconds" in message
    for text in (message, logged.getvalue()):
        assert KEY_A not in text and KEY_B not in text
    assert len(keys_sent(pool_gateway)) == 2  # each key once
    # The next call: every key is on the bench, so the one due back first is sent, and explained again.
    with pytest.raises(openai.PermissionDeniedError, match="Every gateway key"):
        chat()


def test_keys_by_model_send_each_model_with_a_key_granted_it(pool_gateway: GatewaySimulator) -> None:
    pool_gateway.set_key_models(KEY_A, ["gpt-*"])
    pool_gateway.set_key_models(KEY_B, ["claude-*"])
    install(pool_gateway, api_key=KEY_A, keys_by_model={"claude-*": [KEY_B]})
    assert chat("gpt-4o-mini").model == "gpt-4o-mini"
    assert chat("claude-sonnet-4-5").model == "claude-sonnet-4-5"
    records = [r for r in pool_gateway.records if r.path == "/v1/chat/completions"]
    assert [(r.model, r.key, r.status) for r in records] == [
        ("gpt-4o-mini", KEY_A, 200),
        ("claude-sonnet-4-5", KEY_B, 200),
    ]


def test_a_rotated_key_file_is_picked_up_within_one_second(pool_gateway: GatewaySimulator, tmp_path: Path) -> None:
    # Keys of no known shape, so that only their exact values (read from the file) can mask them.
    old, new = "gwold0123456789ABCDEFGHIJ", "gwnew0123456789ABCDEFGHIJ"
    pool_gateway.accepted_keys = frozenset({old, new})
    secret = tmp_path / "secret" / "api-key"
    secret.parent.mkdir()
    secret.write_text(old + "\n")
    install(pool_gateway, api_key_file=str(secret))
    chat()
    # Rotate as Kubernetes does: a new file moved into place (a new inode).
    fresh = secret.with_name(".new")
    fresh.write_text(new + "\n")
    os.replace(fresh, secret)
    rotated_at = time.monotonic()
    while keys_sent(pool_gateway)[-1] != new:
        assert time.monotonic() - rotated_at < 1.0, "the rotated key was not in use within 1 s"
        chat()  # never fails: until the new key is read, the old one answers (a rotation's grace period)
        time.sleep(0.05)
    assert keys_sent(pool_gateway)[0] == old
    with root_output(logging.WARNING) as logged:
        logging.getLogger("app").warning("old %s new %s", old, new)  # the rotated-out key stays a secret too
    assert old not in logged.getvalue() and new not in logged.getvalue()


def test_a_key_file_emptied_mid_rotation_keeps_the_last_keys(pool_gateway: GatewaySimulator, tmp_path: Path) -> None:
    secret = tmp_path / "keys"
    secret.write_text(f"{KEY_A}\n{KEY_B} 2\n")
    install(pool_gateway, api_keys_file=str(secret))
    secret.write_text("")
    runtime = current()
    assert runtime is not None and runtime.key_files is not None
    runtime.key_files._next_look = 0.0  # look now
    with root_output(logging.WARNING) as logged:
        chat()
    assert "holds no key" in logged.getvalue()
    assert keys_sent(pool_gateway)[-1] in (KEY_A, KEY_B)


def test_no_pooled_key_in_logs_errors_or_repr(pool_gateway: GatewaySimulator, tmp_path: Path) -> None:
    secret = tmp_path / "keys"
    secret.write_text(f"{KEY_C}\n")
    install(pool_gateway, api_keys=[KEY_A], keys_by_model={"x-*": [KEY_B]}, api_keys_file=str(secret), log="debug")
    settings = load_settings({"api_keys": [KEY_A], "keys_by_model": {"x-*": [KEY_B]}})
    with root_output(logging.DEBUG) as logged:
        logging.getLogger("app").warning("keys %s %s %s", KEY_A, KEY_B, KEY_C)
        chat()
    text = logged.getvalue() + repr(settings)
    for key in KEYS:
        assert key not in text


def test_doctor_shows_each_key_masked_with_its_state(tmp_path: Path) -> None:
    secret = tmp_path / "keys"
    secret.write_text(f"{KEY_C} 2\n")
    env = {name: value for name, value in os.environ.items() if not name.startswith("YIBU_")}
    env.update(
        YIBU_API_KEYS=f"{KEY_A},{KEY_B}",
        YIBU_API_KEYS_FILE=str(secret),
        YIBU_NODES="http://127.0.0.1:9/v1",
    )
    done = subprocess.run([YIBU, "doctor", "--timeout", "1"], env=env, capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    for key in KEYS:
        assert key not in out
    assert "Gateway keys" in out
    lines = [line for line in out.splitlines() if "sk-...nopq" in line and "weight" in line]
    assert len(lines) == 3 and all(line.rstrip().endswith("ready") for line in lines)
    assert f"api_keys_file {secret} line 1" in out


def test_many_keys_pinned_for_redaction_still_mask_a_line(pool_gateway: GatewaySimulator) -> None:
    many = [f"sk-many-{index:04d}-0123456789abcdefghij" for index in range(50)]
    install(pool_gateway, api_keys=[KEY_A, *many])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("app.many")
    logger.addHandler(handler)
    try:
        logger.warning("key=%s", many[37])
    finally:
        logger.removeHandler(handler)
    assert many[37] not in stream.getvalue()
