"""llm_judge through the real `openai` SDK against a tiny OpenAI-compatible server run in-process
(the server returns canned verdicts chosen by a marker in the graded response), and through a
local callable. Typed errors for empty and unparseable verdicts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from halo_common.errors import BadRequest
from halo_schemas.verifiers import VerifierSpec, VerifyContext, VerifyStage
from halo_verifiers.engine import VerifierEngine
from halo_verifiers.verifiers.llm_judge import (
    JudgeEmptyVerdict,
    JudgeUnparseableVerdict,
    parse_verdict,
)

VERDICTS = {
    "GOOD": '{"score": 9, "reason": "correct and concise"}',
    "MEH": "Reasoning... the answer is partly right.\nScore: 4/10",
    "FENCED": '```json\n{"rating": 7.5}\n```',
    "EMPTY": "",
    "NONSENSE": "I would rather not grade this.",
    "TOOHIGH": '{"score": 42}',
}


class _Handler(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        user = body["messages"][-1]["content"]
        if "SERVER-ERROR" in user:
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "boom", "type": "server_error"}}')
            return
        key = next((k for k in VERDICTS if f"<<{k}>>" in user), "GOOD")
        reply = {
            "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": VERDICTS[key]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def judge_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def judge(engine: VerifierEngine, endpoint: str, completion: str, **params: Any):  # noqa: ANN201
    spec = VerifierSpec(name="llm_judge", params={"endpoint": endpoint, "model": "judge-model", "retries": 0,
                                                  "timeout_s": 10, **params})
    return engine.verify(spec, completion, VerifyContext(prompt="What is 2+2?", rubric="Correct answer is 4.",
                                                         reference="4"), use_cache=False)


def test_graded_verdicts_through_the_openai_sdk(engine: VerifierEngine, judge_server: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALO_TEST_JUDGE_KEY", "sk-test-123")
    _Handler.requests.clear()
    good = judge(engine, judge_server, "It is 4. <<GOOD>>", api_key_env="HALO_TEST_JUDGE_KEY")
    assert (good.reward, good.success, good.stage) == (0.9, True, VerifyStage.JUDGED)
    assert good.details["reason"] == "correct and concise"
    sent = _Handler.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sk-test-123"
    assert sent["body"]["model"] == "judge-model" and sent["body"]["temperature"] == 0
    user = sent["body"]["messages"][-1]["content"]
    assert "Correct answer is 4." in user and "What is 2+2?" in user and "REFERENCE ANSWER:\n4" in user

    meh = judge(engine, judge_server, "maybe 5 <<MEH>>")
    assert meh.reward == pytest.approx(0.4) and not meh.success
    fenced = judge(engine, judge_server, "<<FENCED>>", scale_min=1, scale_max=10)
    assert fenced.reward == pytest.approx((7.5 - 1) / 9)
    custom_rubric = judge(engine, judge_server, "<<GOOD>>", rubric="Only the number matters.")
    assert "Only the number matters." in _Handler.requests[-1]["body"]["messages"][-1]["content"]
    assert custom_rubric.reward == 0.9


def test_typed_errors(engine: VerifierEngine, judge_server: str) -> None:
    empty = judge(engine, judge_server, "<<EMPTY>>")
    assert (empty.error_type, empty.reward, empty.stage) == ("judge_empty_verdict", 0.0, VerifyStage.ERROR)
    nonsense = judge(engine, judge_server, "<<NONSENSE>>")
    assert nonsense.error_type == "judge_unparseable_verdict" and "rather not" in nonsense.details["verdict"]
    high = judge(engine, judge_server, "<<TOOHIGH>>")
    assert high.error_type == "judge_unparseable_verdict" and "outside [0, 10]" in (high.error or "")
    down = judge(engine, judge_server, "SERVER-ERROR")
    assert down.error_type == "judge_request_failed"
    unreachable = judge(engine, "http://127.0.0.1:9/v1", "x")
    assert unreachable.error_type == "judge_request_failed"


def test_local_callable_judge(engine: VerifierEngine) -> None:
    seen: list[list[dict[str, str]]] = []

    def my_judge(messages: list[dict[str, str]]) -> str:
        seen.append(messages)
        return "Score: 8" if "forty-two" in messages[-1]["content"] else "score = 1"

    engine.runtime.judges["unit"] = my_judge
    try:
        spec = VerifierSpec(name="llm_judge", params={"judge": "unit"})
        assert engine.verify(spec, "forty-two", use_cache=False).reward == 0.8
        assert engine.verify(spec, "seven", use_cache=False).reward == 0.1
        assert seen[0][0]["role"] == "system" and "JSON" in seen[0][0]["content"]
        none = engine.verify(VerifierSpec(name="llm_judge", params={"judge": "nobody"}), "x")
        assert none.error_type == "judge_request_failed"
    finally:
        engine.runtime.judges.pop("unit")


def test_spec_validation() -> None:
    from halo_verifiers.registry import REGISTRY

    for bad in ({}, {"endpoint": "http://x/v1"}, {"judge": "a", "endpoint": "http://x/v1", "model": "m"},
                {"judge": "a", "scale_min": 5, "scale_max": 5}, {"judge": "a", "api_key": "sk-no-secrets-in-specs"}):
        with pytest.raises(BadRequest):
            REGISTRY.validate_params(VerifierSpec(name="llm_judge", params=bad))


@pytest.mark.parametrize(
    ("text", "score"),
    [('{"score": 3}', 3.0), ("Rating: 6.5", 6.5), ("8/10", 8.0), ("<think>hmm 2/10?</think> score: 9", 9.0),
     ("7", 7.0), ("Grade - 5 out of 10", 5.0), ('{"score": "4"}', 4.0)],
)
def test_parse_verdict(text: str, score: float) -> None:
    assert parse_verdict(text, 0, 10)[0] == pytest.approx(score)


def test_parse_verdict_errors() -> None:
    with pytest.raises(JudgeEmptyVerdict):
        parse_verdict("   ", 0, 10)
    with pytest.raises(JudgeEmptyVerdict):
        parse_verdict("<think>only thinking</think>", 0, 10)
    with pytest.raises(JudgeUnparseableVerdict):
        parse_verdict("great answer!", 0, 10)
    with pytest.raises(JudgeUnparseableVerdict):
        parse_verdict("11/10", 0, 10)
