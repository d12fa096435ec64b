"""book/_ext/kernel_poll.py: the kernel client's wait for a reply polls in slices, so a
poll that misses a message already in the socket (a lost edge of ZeroMQ's
edge-triggered descriptor) costs one slice, not the cell's whole timeout."""
import asyncio
import sys
import time
from pathlib import Path
from queue import Empty

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "book" / "_ext"))
import kernel_poll  # noqa: E402


class _Socket:
    """A socket whose message is there from the start, but whose first ``misses`` polls
    do not see it (what a lost edge does); it records each poll's timeout."""

    def __init__(self, misses, there=True):
        self.misses, self.there, self.polls = misses, there, []

    async def poll(self, timeout_ms):
        self.polls.append(timeout_ms)
        if self.misses or not self.there:  # nothing seen: the poll waits its timeout
            self.misses = max(0, self.misses - 1)
            await asyncio.sleep(timeout_ms / 1e3)
            return 0
        return 1


class _Channel:
    def __init__(self, socket):
        self.socket = socket

    async def _recv(self):
        return {"msg_type": "execute_reply"}


def _get(channel, timeout):
    return asyncio.run(kernel_poll.sliced_get_msg(channel, timeout))


def test_a_missed_message_costs_one_slice_not_the_timeout(monkeypatch):
    monkeypatch.setattr(kernel_poll, "SLICE_S", 0.05)
    channel = _Channel(_Socket(misses=1))
    t0 = time.monotonic()
    assert _get(channel, timeout=300) == {"msg_type": "execute_reply"}
    assert time.monotonic() - t0 < 1  # the unsliced poll would have waited 300 s
    assert channel.socket.polls == [50, 50]


def test_without_a_timeout_it_waits_slice_after_slice(monkeypatch):
    monkeypatch.setattr(kernel_poll, "SLICE_S", 0.02)
    channel = _Channel(_Socket(misses=5))
    assert _get(channel, timeout=None) == {"msg_type": "execute_reply"}
    assert channel.socket.polls == [20] * 6


def test_no_message_is_empty_after_the_timeout_and_no_later(monkeypatch):
    monkeypatch.setattr(kernel_poll, "SLICE_S", 0.1)
    channel = _Channel(_Socket(misses=0, there=False))
    t0 = time.monotonic()
    with pytest.raises(Empty):
        _get(channel, timeout=0.25)
    assert 0.25 <= time.monotonic() - t0 < 0.6
    assert channel.socket.polls[:2] == [100, 100] and channel.socket.polls[2] <= 50


def test_install_replaces_the_clients_get_msg():
    from jupyter_client.channels import AsyncZMQSocketChannel
    kernel_poll.install()
    assert AsyncZMQSocketChannel.get_msg is kernel_poll.sliced_get_msg
