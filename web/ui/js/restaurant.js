// One restaurant for sales and admin: live status, a day of its timeline as a 24-hour bar, and its
// unavailability history (admin may schedule and cancel).

import { api, escapeHtml, renderHeader, requireUser } from "./session.js";
import { describeStatus, statusKind } from "./status-text.js";
import { renderIntervalRows, renderTimeline, renderTotals } from "./timeline-bar.js";
import { UnavailabilityPanel } from "./unavailabilities.js";
import { addDays, dayBounds, formatDateTime, isValidZone, localDate } from "./zoned.js";

const STATUS_POLL_MS = 5_000;
const TIMELINE_POLL_MS = 30_000;
const FALLBACK_ZONE = "America/Sao_Paulo";
const DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

const user = requireUser(["sales", "admin"]);
if (user) start(user);

function dayHours(h) {
  if (!h) return "closed";
  return h.open === h.close ? "open 24 h" : `${h.open}–${h.close}`;
}

/** "every day 10:00–23:00", or day by day when they differ. */
function hoursSummary(hours) {
  if (!hours) return "";
  const each = DAYS.map((day) => dayHours(hours[day]));
  if (each.every((text) => text === each[0])) return `every day ${each[0]}`;
  return DAYS.map((day, i) => `${day} ${each[i]}`).join(" · ");
}

async function start(user) {
  renderHeader(user);
  const rid = decodeURIComponent(location.pathname.split("/").pop());
  document.title = `${rid} — Restaurant presence`;
  document.getElementById("title").textContent = rid;

  let timeZone = FALLBACK_ZONE;
  try {
    const profile = await api(`/restaurants/${encodeURIComponent(rid)}`);
    if (isValidZone(profile.timezone)) timeZone = profile.timezone;
    document.getElementById("profile").textContent =
      `group ${profile.group} · ${timeZone} · ${hoursSummary(profile.hours)}`;
  } catch (exc) {
    document.getElementById("profile").textContent = `profile unavailable (${exc.message}); times in ${timeZone}`;
  }

  const badge = document.getElementById("badge");
  async function refreshStatus() {
    try {
      const status = await api(`/restaurants/${encodeURIComponent(rid)}/status`);
      const kind = statusKind(status);
      badge.className = `badge k-${kind}`;
      badge.dataset.kind = kind;
      badge.textContent = describeStatus(status, timeZone);
      const since = status.since ? `since ${formatDateTime(new Date(status.since), timeZone)}` : "";
      const seen = status.last_seen ? ` · last heard ${formatDateTime(new Date(status.last_seen), timeZone)}` : "";
      document.getElementById("status-since").textContent =
        `${since}${seen} · ${status.devices_connected} device(s) connected`;
    } catch (exc) {
      badge.className = "badge k-closed";
      badge.textContent = `status unavailable: ${exc.message}`;
    }
  }

  const dayInput = document.getElementById("day");
  document.getElementById("day-zone").textContent = `days on the restaurant's clock (${timeZone})`;
  async function refreshTimeline() {
    const day = dayInput.value;
    const [from, to] = dayBounds(day, timeZone);
    const error = document.getElementById("timeline-error");
    error.textContent = "";
    try {
      const query = new URLSearchParams({ from: from.toISOString(), to: to.toISOString() });
      const body = await api(`/restaurants/${encodeURIComponent(rid)}/timeline?${query}`);
      const seconds = renderTimeline(document.getElementById("timeline"), {
        from, to, intervals: body.intervals, timeZone,
      });
      renderTotals(document.getElementById("totals"), seconds);
      renderIntervalRows(document.getElementById("intervals"), body.intervals, timeZone);
    } catch (exc) {
      renderTimeline(document.getElementById("timeline"), { from, to, intervals: [], timeZone });
      error.innerHTML = `timeline: ${escapeHtml(exc.message)}`;
    }
  }
  const today = localDate(new Date(), timeZone);
  dayInput.value = new URLSearchParams(location.search).get("day") || today;
  dayInput.max = today;
  dayInput.addEventListener("change", refreshTimeline);
  for (const [id, step] of [["prev-day", -1], ["next-day", 1]]) {
    document.getElementById(id).addEventListener("click", () => {
      const next = addDays(dayInput.value, step);
      if (next > today) return;
      dayInput.value = next;
      refreshTimeline();
    });
  }

  const panel = new UnavailabilityPanel(document.getElementById("unavailabilities"), {
    rid, timeZone, canManage: user.role === "admin",
    onChange: () => { refreshStatus(); refreshTimeline(); },
  });

  await Promise.all([refreshStatus(), refreshTimeline(), panel.refresh()]);
  // Live enough for one restaurant, and works for every role: the dashboard websocket is for grids.
  setInterval(() => {
    if (document.visibilityState === "visible") refreshStatus();
  }, STATUS_POLL_MS);
  setInterval(() => {
    if (document.visibilityState === "visible" && dayInput.value === localDate(new Date(), timeZone)) refreshTimeline();
  }, TIMELINE_POLL_MS);
}
