// The restaurant's own page: holds this browser's device session with the broker of the
// restaurant's shard, shows the derived status the platform publishes back, and manages
// unavailabilities.

import { browserDeviceId, DeviceSession } from "./device-session.js";
import { api, renderHeader, requireUser, restaurantSecret } from "./session.js";
import { shardOf } from "./shards.js";
import { describeStatus, statusKind } from "./status-text.js";
import { UnavailabilityPanel } from "./unavailabilities.js";
import { formatDateTime, isValidZone } from "./zoned.js";

const FALLBACK_ZONE = "America/Sao_Paulo";
const DEFAULT_HEARTBEAT_S = 30;

const user = requireUser(["restaurant"]);
if (user) start(user);

async function start(user) {
  const rid = user.restaurantId;
  const errorBox = document.getElementById("client-error");
  let session = null;
  renderHeader(user, { beforeLogout: async () => session && session.stop() });
  document.getElementById("title").textContent = rid;
  document.title = `${rid} — Restaurant presence`;

  let timeZone = FALLBACK_ZONE;
  let lastStatus = null;
  const [config, profile] = await Promise.all([
    fetch("/ui/config.json").then((r) => (r.ok ? r.json() : Promise.reject(new Error(`config: HTTP ${r.status}`)))),
    api(`/restaurants/${encodeURIComponent(rid)}`).catch((exc) => ({ error: exc.message })),
  ]).catch((exc) => [{ error: exc.message }, {}]);
  if (profile.error) {
    document.getElementById("profile").textContent = `profile unavailable (${profile.error}); times in ${timeZone}`;
  } else {
    if (isValidZone(profile.timezone)) timeZone = profile.timezone;
    document.getElementById("profile").textContent = `group ${profile.group} · times in ${timeZone}`;
  }

  const badge = document.getElementById("status");
  function showStatus(status) {
    lastStatus = status;
    const kind = statusKind(status);
    badge.className = `badge big k-${kind}`;
    badge.dataset.kind = kind;
    badge.textContent = describeStatus(status, timeZone);
    // Not devices_connected: the retained status is republished only on a transition, so its count
    // of devices may be old; the line below says whether this device is connected.
    document.getElementById("status-since").textContent = status.since
      ? `since ${formatDateTime(new Date(status.since), timeZone)}`
      : "";
  }
  // "until 10:00" turns into "until Tue 10:00" at midnight: re-read the words now and then.
  setInterval(() => lastStatus && showStatus(lastStatus), 60_000);

  const link = document.getElementById("link");
  function showLink(state) {
    link.classList.toggle("up", state.up);
    let text = `${state.text} · ${state.url} as ${rid}:${deviceId} · epoch ${state.epoch}`;
    if (state.retryInMs !== undefined) text += ` · retry in ${(state.retryInMs / 1000).toFixed(1)} s (attempt ${state.attempt})`;
    if (state.error && !state.up) text += ` · ${state.error}`;
    link.querySelector(".text").textContent = text;
  }

  const panel = new UnavailabilityPanel(document.getElementById("unavailabilities"), {
    rid, timeZone, canManage: true,
  });
  panel.refresh();

  const secret = restaurantSecret();
  const deviceId = browserDeviceId();
  if (config.error || !config.mqtt_ws_urls || !config.mqtt_ws_urls.length) {
    errorBox.textContent = `Cannot read the broker addresses (${config.error || "none configured"}).`;
    return;
  }
  if (!secret) {
    errorBox.innerHTML = `This tab does not hold the restaurant's secret, which the broker needs. <a href="/ui/login?next=/ui/client">Log in again</a>.`;
    return;
  }
  const url = config.mqtt_ws_urls[shardOf(rid, config.mqtt_ws_urls.length)];
  const heartbeatMs = 1000 * (Number(config.heartbeat_interval_s) || DEFAULT_HEARTBEAT_S);

  const run = () => {
    session = new DeviceSession({ url, rid, secret, deviceId, heartbeatMs, onStatus: showStatus, onLink: showLink });
    window.presenceClient = { session, rid, deviceId, url };
    session.start();
  };
  if (!navigator.locks) {
    run();
    return;
  }
  // Two tabs of this browser would be one device (same client id) taking the session from each
  // other in turn: one tab holds it, another waits until that one closes.
  const waiting = setTimeout(() => {
    errorBox.textContent = "Another tab of this browser is connected for this restaurant; this one takes over when it closes.";
  }, 500);
  navigator.locks.request(`presence-device:${rid}:${deviceId}`, () => {
    clearTimeout(waiting);
    errorBox.textContent = "";
    run();
    // Held until the tab closes (or logs out and navigates away).
    return new Promise(() => {});
  });
}
