"""Many paho clients on one asyncio loop: their sockets sit in the loop's selector, not in threads.

paho's own `loop_start()` costs a thread (and a socket pair) per client; at 10,000 devices that is
10,000 threads. Here every client is driven by paho's external-loop API: the loop calls `loop_read`
when a socket is readable, `loop_write` on its next turn when paho queues bytes (it says so through
`on_socket_register_write`; a writer is registered only if the socket buffer is full), and
`loop_misc` regularly for keepalive. Only the blocking part of connecting (TCP connect, WebSocket
handshake) runs in a small thread pool.
"""

import asyncio
import logging
import math
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import paho.mqtt.client as mqtt

from client_sim.brokers import BrokerAddress

logger = logging.getLogger(__name__)

# paho's loop_misc sends PINGREQ and notices a broker that stopped answering. Visiting every client
# once per pass (a slice of them each tick) with a pass of a quarter of the keepalive, at most 5 s,
# is precise enough and costs far less than calling it for all of them every second.
MAX_MISC_PASS_S = 5.0


class MqttPump:
    """Owns the selector registrations of every client it connected; use from the loop's thread."""

    def __init__(self, connect_threads: int = 16, keepalive_s: float = 60.0) -> None:
        self._misc_pass_s = min(MAX_MISC_PASS_S, keepalive_s / 4)
        self._misc_tick_s = min(1.0, self._misc_pass_s)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._executor = ThreadPoolExecutor(max_workers=connect_threads, thread_name_prefix="mqtt-connect")
        self._fds: dict[mqtt.Client, int] = {}
        self._writing: set[mqtt.Client] = set()  # clients with a writer in the selector
        self._flushing: set[mqtt.Client] = set()  # clients with a flush scheduled
        self._misc_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._misc_task = self._loop.create_task(self._misc_forever(), name="mqtt-pump-misc")

    async def close(self) -> None:
        if self._misc_task is not None:
            self._misc_task.cancel()
            await asyncio.gather(self._misc_task, return_exceptions=True)
        for client in list(self._fds):
            # Whatever is still open here was not stopped gracefully: cut it like a crash.
            self.abort(client)
            self._drop(client)
            _close_socket(client)
        # Connects already running finish within paho's connect timeout; waiting for them keeps
        # their completion from landing on a loop that is gone.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    @property
    def open_sockets(self) -> int:
        return len(self._fds)

    def new_client(self, client_id: str, broker: BrokerAddress, userdata: Any = None) -> mqtt.Client:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            userdata=userdata,
            protocol=mqtt.MQTTv311,
            transport=broker.transport,
            reconnect_on_failure=False,
        )
        if broker.transport == "websockets":
            client.ws_set_options(path=broker.path)
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    async def connect(self, client: mqtt.Client, broker: BrokerAddress, keepalive: int,
                      bind_address: str = "") -> None:
        """Open the socket and queue CONNECT; the CONNACK arrives later through `on_connect`.

        `connect()` blocks (TCP connect, WebSocket handshake), so it runs in the pool. While it does,
        the client belongs to that thread: the socket callbacks see a foreign thread and do nothing,
        and the socket is registered here, back on the loop, once `connect()` has returned.
        """
        assert self._loop is not None, "MqttPump.start() first"
        future = self._executor.submit(client.connect, broker.host, broker.port, keepalive, bind_address)
        try:
            await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # The thread cannot be interrupted; close whatever socket it ends up opening.
            future.add_done_callback(lambda _: _close_socket(client))
            raise
        sock = client.socket()
        if sock is None:
            raise ConnectionError("paho closed the socket while connecting")
        fd = sock.fileno()
        self._fds[client] = fd
        self._loop.add_reader(fd, self._read, client)
        if client.want_write():
            self._schedule_flush(client)

    def abort(self, client: mqtt.Client) -> None:
        """End the TCP connection without DISCONNECT, as a crashed app or a cut cable would.

        `shutdown()` acts on the connection, so it is done on a duplicate of the descriptor: that
        works for plain sockets and for paho's WebSocket wrapper alike. The broker sees the
        connection end and publishes the last will; paho sees end-of-file at its next read and
        closes and unregisters the socket itself through the usual callbacks.
        """
        fd = self._fds.get(client)
        if fd is None:
            return
        try:
            dup = socket.socket(fileno=socket.dup(fd))
        except OSError:
            return
        try:
            dup.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already disconnected: the broker has its will to publish either way
        finally:
            dup.close()

    def _read(self, client: mqtt.Client) -> None:
        try:
            client.loop_read()
        except Exception:
            logger.exception("paho loop_read failed for %s", client._client_id)

    def _write(self, client: mqtt.Client) -> None:
        try:
            client.loop_write()
        except Exception:
            logger.exception("paho loop_write failed for %s", client._client_id)

    async def _misc_forever(self) -> None:
        pending: list[mqtt.Client] = []
        while True:
            await asyncio.sleep(self._misc_tick_s)
            if not pending:
                pending = list(self._fds)
            batch = math.ceil(len(self._fds) * self._misc_tick_s / self._misc_pass_s)
            chunk, pending = pending[-batch:], pending[:-batch]
            for client in chunk:
                if client not in self._fds:
                    continue
                try:
                    client.loop_misc()
                except Exception:
                    logger.exception("paho loop_misc failed for %s", client._client_id)

    def _on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _on_register_write(self, client: mqtt.Client, _userdata: Any, _sock: Any) -> None:
        if client in self._fds and client not in self._writing and self._on_loop_thread():
            self._schedule_flush(client)

    def _schedule_flush(self, client: mqtt.Client) -> None:
        # Write on the next turn of the loop rather than through a writer callback: the socket is
        # almost always writable, and adding then removing a writer costs two epoll_ctl calls per
        # message. Packets queued in the same turn (birth + SUBSCRIBE) go out together.
        if client not in self._flushing:
            assert self._loop is not None
            self._flushing.add(client)
            self._loop.call_soon(self._flush, client)

    def send_now(self, client: mqtt.Client) -> None:
        """Write what paho queued at once rather than on the loop's next turn (not from a paho callback).

        A graceful stop of thousands of devices at once queues thousands of offline messages in one
        turn; flushed only on the next, the first would leave a second after its device said it did.
        """
        self._flushing.discard(client)
        self._flush(client)

    def _flush(self, client: mqtt.Client) -> None:
        self._flushing.discard(client)
        if client not in self._fds or client in self._writing:
            return
        self._write(client)
        fd = self._fds.get(client)
        if fd is not None and client.want_write() and client not in self._writing:
            # The socket buffer is full: wait for the selector to say it drained.
            assert self._loop is not None
            self._writing.add(client)
            self._loop.add_writer(fd, self._write, client)

    def _on_unregister_write(self, client: mqtt.Client, _userdata: Any, _sock: Any) -> None:
        fd = self._fds.get(client)
        if fd is None or client not in self._writing or not self._on_loop_thread():
            return
        assert self._loop is not None
        self._writing.discard(client)
        self._loop.remove_writer(fd)

    def _on_socket_close(self, client: mqtt.Client, _userdata: Any, _sock: Any) -> None:
        # Called by paho just before it closes the descriptor: the selector must forget it first,
        # or a new socket that reuses the number would be confused with this one.
        if self._on_loop_thread():
            self._drop(client)

    def _drop(self, client: mqtt.Client) -> None:
        fd = self._fds.pop(client, None)
        if fd is None or self._loop is None:
            return
        self._loop.remove_reader(fd)
        if client in self._writing:
            self._writing.discard(client)
            self._loop.remove_writer(fd)


def _close_socket(client: mqtt.Client) -> None:
    sock = client.socket()
    if sock is not None:
        sock.close()
