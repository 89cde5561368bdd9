// A day of a restaurant's timeline as one bar: each interval a coloured segment, the hours of the
// restaurant's own clock underneath, time after "now" left blank.

import { escapeHtml } from "./session.js";
import { KIND_LABEL, KINDS, reasonWords, statusKind } from "./status-text.js";
import { formatDuration } from "./zoned.js";

const HOUR_MS = 3_600_000;

function clock(instant, timeZone, seconds = false) {
  const second = seconds ? { second: "2-digit" } : {};
  return new Intl.DateTimeFormat("en-GB", { timeZone, hour: "2-digit", minute: "2-digit", ...second }).format(instant);
}

function words(interval) {
  const kind = statusKind(interval);
  return kind === "unavailable" && interval.detail ? `Unavailable — ${reasonWords(interval.detail)}` : KIND_LABEL[kind];
}

/** Draw `intervals` of [from, to) into `root`; returns seconds per kind. */
export function renderTimeline(root, { from, to, intervals, timeZone, now = new Date() }) {
  const span = to - from;
  const pct = (instant) => (100 * (Math.min(Math.max(instant, from), to) - from)) / span;
  const seconds = Object.fromEntries(KINDS.map((k) => [k, 0]));

  const segments = intervals.map((interval) => {
    const start = new Date(interval.start);
    const end = new Date(interval.end);
    const kind = statusKind(interval);
    seconds[kind] += Math.max(0, (Math.min(end, to) - Math.max(start, from)) / 1000);
    const title = `${clock(start, timeZone, true)}–${clock(end, timeZone, true)} · ${words(interval)} · ${formatDuration((end - start) / 1000)}`;
    return `<div class="seg k-${kind}" data-kind="${kind}" style="left:${pct(start)}%;width:${pct(end) - pct(start)}%"
      title="${escapeHtml(title)}"></div>`;
  });

  // A label every 3 hours of elapsed time, read on the restaurant's clock (right on DST days too).
  const ticks = [];
  for (let t = from.getTime(); t <= to.getTime(); t += 3 * HOUR_MS) {
    ticks.push(`<span style="left:${pct(new Date(t))}%">${clock(new Date(t), timeZone)}</span>`);
  }
  const nowMark = now > from && now < to ? `<div class="now" style="left:${pct(now)}%" title="now"></div>` : "";

  root.innerHTML = `<div class="bar">${segments.join("")}</div>${nowMark}<div class="ticks">${ticks.join("")}</div>`;
  return seconds;
}

/** The legend and totals line under the bar. */
export function renderTotals(root, seconds) {
  root.innerHTML = KINDS.map(
    (kind) => `<span><span class="swatch k-${kind}"></span> ${KIND_LABEL[kind]}: <b>${formatDuration(seconds[kind])}</b></span>`,
  ).join("") + `<span><span class="swatch k-future"></span> not yet / no data</span>`;
}

/** The intervals as table rows. */
export function renderIntervalRows(tbody, intervals, timeZone) {
  tbody.innerHTML = intervals
    .map((interval) => {
      const start = new Date(interval.start);
      const end = new Date(interval.end);
      return `<tr><td>${clock(start, timeZone, true)}</td><td>${clock(end, timeZone, true)}</td>
        <td><span class="swatch k-${statusKind(interval)}"></span> ${escapeHtml(words(interval))}</td>
        <td class="num">${formatDuration((end - start) / 1000)}</td></tr>`;
    })
    .join("") || `<tr><td colspan="4" class="muted">No intervals for this day.</td></tr>`;
}
