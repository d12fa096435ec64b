"""The scripted student's message handling (jupyter/hub_client.py), without a hub: a run
ends only on both its execute_reply and its idle status, a dead or restarting kernel is an
error at once, and errors say what was seen."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "jupyter"))
from hub_client import _Run  # noqa: E402

ME = "m1"


def _msg(kind, content, parent=ME):
    return {"msg_type": kind, "content": content,
            "parent_header": {"msg_id": parent} if parent else {}}


def test_a_run_ends_on_its_reply_and_its_idle_and_ignores_other_requests():
    run = _Run("ann", "print(1)")
    run.take(_msg("status", {"execution_state": "busy"}), ME)
    run.take(_msg("stream", {"name": "stdout", "text": "1\n"}), ME)
    run.take(_msg("stream", {"name": "stdout", "text": "not mine\n"}, "other"), ME)
    run.take(_msg("status", {"execution_state": "idle"}), ME)
    assert not run.done()  # idle arrived, the shell reply not yet
    run.take(_msg("execute_reply", {"status": "ok"}), ME)
    assert run.done() and run.result() == "1\n"


def test_an_error_in_the_code_is_raised_with_its_traceback():
    run = _Run("ann", "1/0")
    run.take(_msg("error", {"traceback": ["ZeroDivisionError: division by zero"]}), ME)
    run.take(_msg("execute_reply", {"status": "error"}), ME)
    run.take(_msg("status", {"execution_state": "idle"}), ME)
    with pytest.raises(RuntimeError, match="ann: the code raised:\nZeroDivisionError"):
        run.result()


@pytest.mark.parametrize("state", ["restarting", "dead"])
def test_a_kernel_that_dies_mid_run_is_an_error_that_says_what_was_seen(state):
    run = _Run("ann", "import mgpu_lab\nx = 1")
    run.take(_msg("status", {"execution_state": "busy"}), ME)
    with pytest.raises(RuntimeError) as e:
        run.take(_msg("status", {"execution_state": state}, parent=None), ME)
    said = str(e.value)
    assert "the kernel died" in said and f"kernel is {state}" in said
    assert "'import mgpu_lab'" in said and "['busy']" in said


def test_a_timeout_says_how_long_and_what_the_server_said():
    said = _Run("ann", "x = 1").story(600, "busy")
    assert said.startswith("ann: no answer in 600 s running 'x = 1'")
    assert "kernel is busy" in said and "messages seen for this request: none" in said
