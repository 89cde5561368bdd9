// WS /ws/dashboard: a snapshot, then every status change in sequence. After any drop (network,
// server restart) it reconnects with ?since=<last seq> so nothing is missed and nothing repeats, with
// exponential backoff and full jitter so a restarted server is not hit by every dashboard at once.

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 20_000;
// The server sends a heartbeat about every 15 s: silence this long means a dead connection that the
// browser has not noticed (a laptop waking up, a proxy that dropped it).
const SILENCE_MS = 45_000;

export class DashboardFeed {
  /**
   * handlers: onSnapshot(statuses, seq), onStatus(status, seq), onState({live, text}),
   * onAuthFailed(), onReset(reason).
   */
  constructor(token, handlers) {
    this.token = token;
    this.handlers = handlers;
    this.socket = null;
    this.lastSeq = null; // the seq of the last snapshot or status applied: what `since` resumes from
    this.attempt = 0;
    this.retryTimer = null;
    this.silenceTimer = null;
    this.stopped = false;
    // Counters a test (or a curious operator in the console) can read.
    this.stats = { connects: 0, snapshots: 0, statuses: 0, duplicates: 0, resets: 0, resumes: 0 };
  }

  start() {
    this.stopped = false;
    this._connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.silenceTimer);
    if (this.socket) this.socket.close(1000, "page closed");
  }

  /** Drop the connection as a network failure would (the feed then resumes with `since`). */
  forceReconnect() {
    if (this.socket) this.socket.close(4000, "forced reconnect");
  }

  _url() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const query = new URLSearchParams({ token: this.token });
    if (this.lastSeq !== null) query.set("since", String(this.lastSeq));
    return `${scheme}://${location.host}/ws/dashboard?${query}`;
  }

  _connect() {
    clearTimeout(this.retryTimer);
    const resuming = this.lastSeq !== null;
    this.handlers.onState({ live: false, text: resuming ? `resuming after #${this.lastSeq}…` : "connecting…" });
    const socket = new WebSocket(this._url());
    this.socket = socket;
    this.stats.connects += 1;
    if (resuming) this.stats.resumes += 1;
    socket.onmessage = (event) => this._onFrame(event.data);
    socket.onclose = (event) => this._onClose(socket, event);
    this._armSilence();
  }

  _armSilence() {
    clearTimeout(this.silenceTimer);
    this.silenceTimer = setTimeout(() => this.socket && this.socket.close(4001, "silent"), SILENCE_MS);
  }

  _onFrame(data) {
    this._armSilence();
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      console.warn("dashboard feed: a frame that is not JSON", data);
      return;
    }
    switch (frame.type) {
      case "snapshot":
        this.attempt = 0;
        this.lastSeq = frame.seq;
        this.stats.snapshots += 1;
        this.handlers.onSnapshot(frame.statuses, frame.seq);
        this._live();
        break;
      case "status":
        this.attempt = 0;
        // `since` already keeps repeats out; this guards against a server that sends one anyway.
        if (this.lastSeq !== null && frame.seq <= this.lastSeq) {
          this.stats.duplicates += 1;
          return;
        }
        this.lastSeq = frame.seq;
        this.stats.statuses += 1;
        this.handlers.onStatus(frame.status, frame.seq);
        this._live();
        break;
      case "reset":
        // What we missed is older than the server keeps: the snapshot that follows replaces our state.
        this.stats.resets += 1;
        if (this.handlers.onReset) this.handlers.onReset(frame.reason);
        break;
      case "heartbeat":
        // Not used to advance `since`: this client takes every group, so it sees every seq as a
        // status; a heartbeat only proves the connection is alive.
        this.attempt = 0;
        this._live();
        break;
      default:
        console.warn("dashboard feed: unknown frame type", frame.type);
    }
  }

  _live() {
    this.handlers.onState({ live: true, text: `live · #${this.lastSeq ?? "–"}` });
  }

  _onClose(socket, event) {
    if (socket !== this.socket) return;
    this.socket = null;
    clearTimeout(this.silenceTimer);
    if (this.stopped) return;
    if (event.code === 4401) {
      this.handlers.onAuthFailed();
      return;
    }
    if (event.code === 4403) {
      this.handlers.onState({ live: false, text: "this login may not see the dashboard" });
      return;
    }
    if (event.code === 4400 && this.lastSeq !== null) {
      // The server refused our `since`: start over from a snapshot.
      this.lastSeq = null;
    }
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    const delay = Math.random() * ceiling; // full jitter
    this.attempt += 1;
    this.handlers.onState({ live: false, text: `disconnected · retrying in ${(delay / 1000).toFixed(1)} s` });
    this.retryTimer = setTimeout(() => this._connect(), delay);
  }
}
