"""textenv.serve and textenv.HTTPTask: our env over OpenEnv-style HTTP, played back as a task of ours; the same
episode as in-process, the JSON the server speaks, and the errors an unreachable or malformed server gives."""

import json
import socket
import threading
import urllib.error
import urllib.request
import warnings
from http.server import BaseHTTPRequestHandler, HTTPServer

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import textenv
from textenv import HTTPTask, MultiTurnEnv, format_tool_call
from textenv.http_env import HTTPEnvError

STEP_INFO = ("messages", "env_messages", "turn", "turn_reward", "final_reward", "invalid_action", "tool_calls",
             "tool_errors", "episode_stats")


def post(url, body, raw=None):
    """(status, JSON body) of a POST, HTTP errors included."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def scripted(env, opening):
    """The moves ``opening``, then the oracle's until the episode ends (oracle None: the opening's last, repeated)."""
    moves = list(opening)
    while True:
        yield moves.pop(0) if moves else env.oracle()


@pytest.mark.parametrize("env_id, kwargs, opening, index, ends", [
    ("textenv/GuessNumber-v0", {}, ["no idea", format_tool_call("peek", {}) + " 1", "0"], 2, "terminated"),
    ("textenv/Nim-v0", {}, [], 5, "terminated"),
    ("textenv/GuessNumber-v0", {"max_turns": 3}, ["1", "1", "1"], 0, "truncated"),
])
def test_an_episode_over_http_is_the_episode_played_in_process(env_id, kwargs, opening, index, ends):
    here = textenv.make(env_id, split="eval", **kwargs)
    with textenv.serve(env_id, split="eval", **kwargs) as server:
        rows = [{"split": "eval", "index": i, "seed": 0} for i in range(index + 1)]
        task = HTTPTask(server.url, splits={"eval": rows})
        remote = MultiTurnEnv(task, split="eval")
        assert (task.name, remote.max_turns) == (here.task.name, here.max_turns)
        first = here.reset(seed=0, options={"index": index}), remote.reset(seed=0, options={"index": index})
        assert first[0][0] == first[1][0] and first[0][1]["messages"] == first[1][1]["messages"]
        moves, ended = scripted(here, opening), False
        while not ended:
            move = next(moves)
            obs, reward, terminated, truncated, info = here.step(move)
            r_obs, r_reward, r_terminated, r_truncated, r_info = remote.step(move)
            assert (r_obs, r_reward, r_terminated, r_truncated) == (obs, reward, terminated, truncated)
            assert {k: r_info[k] for k in STEP_INFO} == {k: info[k] for k in STEP_INFO}
            ended = terminated or truncated
        state = get(server.url + "/state")
    assert state["done"] and state["step_count"] == info["turn"] and state["episode_stats"] == info["episode_stats"]
    assert (terminated, truncated) == (ends == "terminated", ends == "truncated")
    assert info["episode_stats"]["return"] == (1.0 if terminated else 0.0)
    assert info["episode_stats"]["tool_errors"] == sum("<tool_call>" in move for move in opening)  # made here too


def test_a_served_env_registered_as_ours_passes_gymnasiums_checker():
    with textenv.serve("textenv/Nim-v0") as server:
        textenv.register("remote/Nim-v0", lambda: HTTPTask(server.url))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # any complaint of the checker fails the test
                check_env(gym.make("remote/Nim-v0"))
        finally:
            textenv.unregister("remote/Nim-v0")


def test_the_server_speaks_openenvs_json_and_runs_tools_itself():
    with textenv.serve("textenv/KeyValue-v0", n_train=3, n_eval=2) as server:
        url = server.url
        assert get(url + "/health") == {"status": "healthy"}
        assert get(url + "/metadata")["max_turns"] == 7 and [t["function"]["name"] for t in
                                                             get(url + "/metadata")["tools"]] == ["get", "submit"]
        status, body = post(url + "/step", {"action": {"message": "hi"}})
        assert status == 400 and "call reset() before step()" in body["detail"]
        status, body = post(url + "/reset", {"seed": 0, "split": "eval", "index": 1, "episode_id": "e-1"})
        assert status == 200 and set(body) == {"observation", "reward", "done", "metadata"}
        assert (body["reward"], body["done"], body["metadata"]) == (None, False, {"episode_id": "e-1",
                                                                                  "split": "eval", "index": 1})
        start = textenv.make_task("textenv/KeyValue-v0", n_train=3, n_eval=2).split("eval")[1]["start"]
        assert start in body["observation"]["messages"][0]["content"]
        status, body = post(url + "/step", {"action": {"message": format_tool_call("get", {"key": start})},
                                            "request_id": "r-1"})
        assert status == 200 and (body["reward"], body["done"]) == (0.0, False)
        assert body["observation"]["env_messages"][0]["role"] == "tool" and body["metadata"]["tool_calls"] == 1
        assert get(url + "/state") | {"episode_stats": None} == {"episode_id": "e-1", "step_count": 1, "done": False,
                                                                 "episode_stats": None}
        for path, sent, detail in [
            ("/step", {"action": {"text": "hi"}}, 'the body needs "action": {"message"'),
            ("/step", {"action": {"message": "hi"}, "act": 1}, "unknown field(s) ['act']"),
            ("/reset", {"index": 99, "split": "eval"}, "index 99 is out of range for split 'eval'"),
            ("/reset", {"split": "test"}, "has no split 'test'"),
            ("/nothing", {}, "no route POST /nothing; routes: GET /health"),
        ]:
            status, body = post(url + path, sent)
            assert status in (400, 404) and detail in body["detail"], (path, body)
        status, body = post(url + "/step", None, raw=b"{not json")
        assert status == 400 and body["detail"].startswith("the body is not JSON")
        with pytest.raises(HTTPEnvError, match=r"GET http://127.0.0.1:\d+/metadata lists tools \['get', 'submit'\]; "
                                               r"a local MultiTurnEnv runs the <tool_call> blocks"):
            HTTPTask(url)


class Broken(textenv.MultiTurnTask):
    name, splits = "Broken-v0", {"train": [{}]}

    def reset(self, row, rng):
        return [{"role": "user", "content": "say something"}], {}

    def respond(self, state, message):
        raise ZeroDivisionError("the task's own bug")


def test_the_envs_own_failure_is_a_500_and_the_server_keeps_serving():
    with textenv.serve(MultiTurnEnv(Broken(), max_length=10)) as server:
        assert post(server.url + "/reset", {})[0] == 200
        status, body = post(server.url + "/step", {"action": {"message": "x" * 11}})
        assert status == 400 and body["detail"] == ("step: the message has 11 characters, more than the env's "
                                                    "max_length=10")
        status, body = post(server.url + "/step", {"action": {"message": "hi"}})
        assert (status, body) == (500, {"detail": "Environment error: ZeroDivisionError: the task's own bug"})
        assert get(server.url + "/health") == {"status": "healthy"}


class Scripted(BaseHTTPRequestHandler):
    """A server that answers each path with a fixed (status, body); the test sets ``answers``."""

    answers: dict = {}

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def _answer(self):
        status, body = self.answers[self.path]
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted_server():
    httpd = HTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_an_unreachable_server_is_named():
    with socket.socket() as s:                 # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HTTPEnvError, match=rf"cannot reach GET http://127.0.0.1:{port}/metadata \(.*\); is the "
                                           r"server running\? textenv.serve\(env\) starts one"):
        HTTPTask(f"http://127.0.0.1:{port}")


def test_a_malformed_server_is_named_with_the_url_and_the_field(scripted_server):
    url, meta = scripted_server, {"name": "Odd-v0", "max_turns": 3}
    good_reset = {"observation": {"messages": [{"role": "user", "content": "hi"}]}, "reward": None, "done": False}
    cases = [
        ({"/metadata": (200, b"<html>not json</html>")}, r"GET .*/metadata answered with non-JSON: b'<html>not json"),
        ({"/metadata": (200, [1, 2])}, r"GET .*/metadata answered a JSON list, expected an object"),
        ({"/metadata": (200, {"max_turns": 3})}, r"GET .*/metadata: the response has no field 'name' \(it has "
                                                 r"\['max_turns'\]\)"),
        ({"/metadata": (500, {"detail": "boom"})}, r"GET .*/metadata answered HTTP 500: boom"),
        ({"/metadata": (200, meta), "/reset": (200, {"reward": None})}, r"POST .*/reset: the response has no "
                                                                         r"field 'observation'"),
        ({"/metadata": (200, meta), "/reset": (200, {"observation": {"messages": "hi"}})},
         r"POST .*/reset: field observation.messages: expected a non-empty list of messages"),
        ({"/metadata": (200, meta), "/reset": (200, good_reset),
          "/step": (200, {"observation": {"env_messages": []}, "reward": "high", "done": False})},
         r"POST .*/step: the response's field 'reward' must be a number, got \"high\""),
        ({"/metadata": (200, meta), "/reset": (200, good_reset),
          "/step": (200, {"observation": {"env_messages": {"role": "user"}}, "reward": 0, "done": False})},
         r"POST .*/step: the response's field observation.env_messages must be a list of messages"),
    ]
    for answers, error in cases:
        Scripted.answers = answers
        with pytest.raises(HTTPEnvError, match=error):
            env = MultiTurnEnv(HTTPTask(url))
            env.reset(seed=0)
            env.step("hello")


def test_a_foreign_text_env_plays_through_its_reply_field(scripted_server):
    Scripted.answers = {"/reset": (200, {"observation": {"echoed_message": ""}, "reward": None, "done": False}),
                        "/step": (200, {"observation": {"echoed_message": "hello", "message_length": 5},
                                        "reward": 0.5, "done": True})}
    env = MultiTurnEnv(HTTPTask(scripted_server, name="Echo-v0", max_turns=4, reply_field="echoed_message"))
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step("hello")
    assert (reward, terminated, truncated) == (0.5, True, False)
    assert info["env_messages"] == [{"role": "user", "content": "hello"}]
