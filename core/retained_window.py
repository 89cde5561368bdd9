"""The retained statuses one broker link publishes, at most a window of them unacknowledged at a time.

paho can hold back QoS 1 messages itself (`max_inflight_messages`), but then on every PUBACK it walks
the messages it holds from the first to find the next one to send (`Client._update_inflight`): with a
storm's statuses queued behind a window of 1,000 that was ~7% of the bridge's CPU (15,000 births,
py-spy, 2026-11-28). So paho is given no limit of its own, and only what this window lets through;
the rest waits here, in order, and goes out as PUBACKs come back.

The window is the broker's Receive Maximum where it announces one (MQTT 5), else `size`: paho does not
keep to the broker's, and a broker may disconnect a client that sends more.
"""

from collections import deque
from collections.abc import Callable

import paho.mqtt.client as mqtt

Item = tuple[str, bytes, int]  # topic, payload, the caller's token


class RetainedWindow:
    def __init__(self, size: int, on_acked: Callable[[int], None]) -> None:
        """`on_acked(token)`: the broker acknowledged the publish made for that token."""
        self.size = size
        self.limit = size
        self.on_acked = on_acked
        self._waiting: deque[Item] = deque()
        self._sent: dict[int, Item] = {}  # paho's mid → what it carries, until its PUBACK

    def __len__(self) -> int:
        """Publishes not acknowledged yet, sent or waiting."""
        return len(self._waiting) + len(self._sent)

    def put(self, client: mqtt.Client, connected: bool, item: Item) -> None:
        self._waiting.append(item)
        if connected:
            self.feed(client)

    def feed(self, client: mqtt.Client) -> None:
        """Hand paho what the window has room for (call once connected, and after each PUBACK)."""
        while self._waiting and len(self._sent) < self.limit:
            item = self._waiting.popleft()
            info = client.publish(item[0], item[1], qos=1, retain=True)
            # Not connected after all: paho keeps a QoS 1 message and sends it once it reconnects.
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                self._waiting.appendleft(item)
                return
            self._sent[info.mid] = item

    def acked(self, client: mqtt.Client, mid: int) -> None:
        item = self._sent.pop(mid, None)
        if item is not None:
            self.on_acked(item[2])
            self.feed(client)

    def connected(self, client: mqtt.Client, receive_maximum: int | None) -> None:
        self.limit = min(self.size, receive_maximum) if receive_maximum else self.size
        self.feed(client)

    def client_replaced(self) -> None:
        """The client was replaced (the MQTT 3.1.1 fallback): what the old one held is sent again, first."""
        self._waiting.extendleft(reversed(list(self._sent.values())))
        self._sent.clear()
