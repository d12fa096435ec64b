"""Notebook runs that do not stall: the asyncio kernel client polls in one-second slices.

nbclient (under jupyter-book's myst-nb, nbconvert, jupytext --execute and nbgrader) waits
for a cell's ``execute_reply`` with ``jupyter_client``'s ``AsyncZMQSocketChannel.get_msg``,
which awaits one ``zmq.asyncio`` ``socket.poll(timeout)``. A ZeroMQ socket tells an event
loop about new messages through an edge-triggered file descriptor (pyzmq's docs), and
when that edge is lost the reply sits unread in the socket until the poll's timeout ends
(zeromq/pyzmq#1558 reports the same: the event comes only once the timeout is over): for
ever without a timeout, 300 s per cell in our book build.

Seen here (2026-12-07, pyzmq 27.3.0, jupyter_client 8.10.0, nbclient 0.11.0): chapter 7
executed by nbconvert with a 25 s cell timeout took 42 s instead of 17 s in 3 runs of 8
under ipykernel 7.4.0, and in 3 of 8 under 6.31.0: its widget cell waited the whole
timeout, then went on with every output. Without a timeout (``jupytext --execute``) the
run hung. With :func:`install`, 0 of 8 stalled under either. A blocking client (no
asyncio) never stalled in 6 runs.

:func:`install` makes ``get_msg`` poll in slices of at most :data:`SLICE_S` seconds up to
the caller's timeout (or for ever, without one): a poll that ends re-reads the socket's
state, so a lost edge costs at most a slice. Every process of ours that runs notebooks
calls it: the book's Sphinx extension (``mgpu_book.py``), ``lab_timings.py`` and nbgrader's
configuration (``assignments.py``).
"""
import time
from queue import Empty

__all__ = ["SLICE_S", "install", "sliced_get_msg"]

SLICE_S = 1.0


async def sliced_get_msg(self, timeout=None):
    """``AsyncZMQSocketChannel.get_msg``, polling at most :data:`SLICE_S` at a time:
    the next message, or ``queue.Empty`` once ``timeout`` seconds (None: never) passed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = SLICE_S if deadline is None else min(SLICE_S, deadline - time.monotonic())
        if await self.socket.poll(max(0, int(left * 1000))):
            return await self._recv()
        if deadline is not None and time.monotonic() >= deadline:
            raise Empty


def install():
    """Replace ``AsyncZMQSocketChannel.get_msg`` by :func:`sliced_get_msg` (once)."""
    from jupyter_client.channels import AsyncZMQSocketChannel
    AsyncZMQSocketChannel.get_msg = sliced_get_msg
