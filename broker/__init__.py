"""The embedded amqtt 0.12.1 broker (`python -m broker`): the same contract as Mosquitto.

Credentials come from the Mosquitto password file that provisioning writes (re-read when it
changes); the topic ACL is `broker.topic_rules`, Mosquitto's `%u` rules. Where amqtt differs:

- It speaks MQTT 3.1.1 only: no shared subscriptions (the bridge subscribes plainly here; the ACL
  accepts `$share/<group>/…` filters only so that the rules read the same), no session expiry.
- Its CONNECT handling would let a wrong password disturb an existing session, keep two connections
  with one client id, and starve a resumed persistent session; `GuardedBroker` fixes all three, and
  on a takeover the old connection's will is published, as with Mosquitto (plain amqtt never
  publishes it); the device protocol's epochs make that late will harmless.
- It publishes a will without asking the topic plugins, so `WillAclPlugin` drops a will on a
  forbidden topic at CONNECT; Mosquitto too accepts such a connection and never sends the will.
- It sends retained messages to a new subscription without the receive check, so a subscription
  is granted only when the whole filter lies inside what the user may read (`restaurants/u/status`
  for restaurant u); Mosquitto 2.0 grants any filter and filters each message at delivery. Either
  way a restaurant receives nothing but its own status.
- Mosquitto's client ids are free; here a restaurant's must be `<restaurant_id>:<device_id>`.
- Retained messages live in memory while the broker runs (a restart loses them, like Mosquitto
  without persistence); devices publish their presence again when they reconnect.
"""
