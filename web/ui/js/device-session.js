// One browser device's MQTT session over WebSocket, by the device protocol of DESIGN.md §3:
// will = presence offline with this connection's epoch, birth right after CONNACK with the same epoch,
// heartbeats, a graceful offline before a deliberate disconnect, and the retained status read back.
//
// mqtt.js's own reconnect is switched off: it would reconnect with the will of the old connection,
// i.e. the old epoch. Each reconnect here is a new client with a new epoch (and so a new will), after
// an exponential backoff with full jitter, so a broker restart is not met by every tablet at once.

import mqtt from "/ui/vendor/mqtt/mqtt.esm.js";

const EPOCH_ORIGIN_MS = Date.UTC(2020, 0, 1); // as client_sim/epochs.py: ms since 2020, never going back
const BACKOFF_BASE_MS = 1_000;
const BACKOFF_CAP_MS = 60_000;
// A connection that lasted this long was a real one: the next failure starts the backoff afresh.
// Shorter ones (the broker accepts, then drops us) keep growing it.
const STABLE_MS = 30_000;
const GRACEFUL_TIMEOUT_MS = 3_000;

export const topics = {
  presence: (rid, did) => `restaurants/${rid}/devices/${did}/presence`,
  heartbeat: (rid, did) => `restaurants/${rid}/devices/${did}/heartbeat`,
  status: (rid) => `restaurants/${rid}/status`,
};

/** This browser's device id, made once and kept (localStorage), like a tablet's serial number. */
export function browserDeviceId() {
  const key = "presence.deviceId";
  let id = localStorage.getItem(key);
  if (!id || !/^[A-Za-z0-9_-]{1,64}$/.test(id)) {
    const bytes = crypto.getRandomValues(new Uint8Array(6));
    id = `web-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
    localStorage.setItem(key, id);
  }
  return id;
}

/**
 * The epoch of a new connection: greater than every epoch this device used before, kept across
 * reloads in localStorage, and from the clock as well so that clearing the storage cannot send the
 * device back to an epoch the platform already holds as ended.
 */
export function nextEpoch(rid, deviceId) {
  const key = `presence.epoch.${rid}.${deviceId}`;
  const last = Number(localStorage.getItem(key)) || 0;
  const epoch = Math.max(Date.now() - EPOCH_ORIGIN_MS, last + 1);
  localStorage.setItem(key, String(epoch));
  return epoch;
}

export class DeviceSession {
  /**
   * `onStatus(status)` for every derived status received, `onLink(state)` with
   * {up, text, url, epoch, attempt, retryInMs, error}.
   */
  constructor({ url, rid, secret, deviceId, heartbeatMs, onStatus, onLink }) {
    Object.assign(this, { url, rid, secret, deviceId, heartbeatMs, onStatus, onLink });
    this.client = null;
    this.epoch = null;
    this.attempt = 0;
    this.connectedAt = 0;
    this.heartbeatTimer = null;
    this.retryTimer = null;
    this.stopped = false;
    this.stats = { connects: 0, births: 0, heartbeats: 0, statuses: 0 };
  }

  start() {
    this.stopped = false;
    this._connect();
  }

  _connect() {
    clearTimeout(this.retryTimer);
    const epoch = nextEpoch(this.rid, this.deviceId);
    const presence = topics.presence(this.rid, this.deviceId);
    this.epoch = epoch;
    this.stats.connects += 1;
    this.onLink({ up: false, text: "connecting", url: this.url, epoch, attempt: this.attempt });
    const client = mqtt.connect(this.url, {
      clientId: `${this.rid}:${this.deviceId}`,
      username: this.rid,
      password: this.secret,
      // MQTT 3.1.1 on every broker: the protocol needs nothing from MQTT 5, and amqtt never answers
      // an MQTT 5 CONNECT, which would cost a timeout on every connect there.
      protocolVersion: 4,
      clean: true,
      keepalive: 30,
      connectTimeout: 10_000,
      reconnectPeriod: 0,
      will: {
        topic: presence,
        payload: JSON.stringify({ state: "offline", epoch, ts: Date.now() }),
        qos: 1,
        retain: true,
      },
    });
    this.client = client;
    client.on("connect", () => {
      if (client !== this.client) return;
      this.connectedAt = Date.now();
      // Subscribe first, birth once the SUBACK is in (with the epoch of the will this connection
      // carries): the status the birth causes is then delivered live. Born first, the status could
      // cross the subscription inside the broker (amqtt stores the retained copy and serves new
      // subscribers without ordering the two), and the page would keep showing the older status.
      client.subscribe(topics.status(this.rid), { qos: 1 }, (error) => {
        if (client !== this.client || error) return;
        client.publish(presence, JSON.stringify({ state: "online", epoch, ts: Date.now() }), { qos: 1, retain: true });
        this.stats.births += 1;
      });
      clearInterval(this.heartbeatTimer);
      this.heartbeatTimer = setInterval(() => this._heartbeat(client, epoch), this.heartbeatMs);
      this.onLink({ up: true, text: "connected", url: this.url, epoch, attempt: 0 });
    });
    client.on("message", (topic, payload) => {
      if (client !== this.client || topic !== topics.status(this.rid)) return;
      try {
        const status = JSON.parse(new TextDecoder().decode(payload));
        this.stats.statuses += 1;
        this.onStatus(status);
      } catch (exc) {
        console.warn("status message that is not JSON", exc);
      }
    });
    client.on("error", (error) => {
      if (client === this.client) this.lastError = error.message;
    });
    client.on("close", () => this._down(client));
  }

  _heartbeat(client, epoch) {
    if (client !== this.client || !client.connected) return;
    client.publish(topics.heartbeat(this.rid, this.deviceId), JSON.stringify({ epoch, ts: Date.now() }), { qos: 0 });
    this.stats.heartbeats += 1;
  }

  _down(client) {
    if (client !== this.client) return;
    clearInterval(this.heartbeatTimer);
    this.client = null;
    // Free the old client for good (no automatic reconnect of its own, no stray timers).
    client.end(true);
    if (this.stopped) return;
    if (this.connectedAt && Date.now() - this.connectedAt >= STABLE_MS) this.attempt = 0;
    this.connectedAt = 0;
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    const delay = Math.random() * ceiling; // full jitter
    this.attempt += 1;
    this.onLink({
      up: false, text: "reconnecting", url: this.url, epoch: this.epoch, attempt: this.attempt,
      retryInMs: delay, error: this.lastError,
    });
    this.retryTimer = setTimeout(() => this._connect(), delay);
  }

  /** Graceful stop: presence offline with cause "graceful", then DISCONNECT (so no will). */
  async stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.heartbeatTimer);
    const client = this.client;
    this.client = null;
    if (!client) return;
    if (client.connected) {
      const offline = JSON.stringify({ state: "offline", epoch: this.epoch, ts: Date.now(), cause: "graceful" });
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, GRACEFUL_TIMEOUT_MS);
        client.publish(topics.presence(this.rid, this.deviceId), offline, { qos: 1, retain: true }, () => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    await new Promise((resolve) => client.end(false, {}, resolve));
    this.onLink({ up: false, text: "signed off", url: this.url, epoch: this.epoch, attempt: 0 });
  }

  /** Drop the connection as a network failure would (the broker publishes the will); for tests. */
  dropConnection() {
    if (this.client && this.client.stream) this.client.stream.destroy();
  }
}
