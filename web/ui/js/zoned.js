// Wall-clock time in a restaurant's own IANA time zone (the browser may be anywhere), with Intl only.

const partsFormatters = new Map();

function partsIn(timeZone) {
  let formatter = partsFormatters.get(timeZone);
  if (!formatter) {
    formatter = new Intl.DateTimeFormat("en-US", {
      timeZone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
    partsFormatters.set(timeZone, formatter);
  }
  return formatter;
}

/** {year, month, day, hour, minute, second} of `instant` on the wall clocks of `timeZone`. */
export function wallClock(instant, timeZone) {
  const out = {};
  for (const { type, value } of partsIn(timeZone).formatToParts(instant)) {
    if (type !== "literal") out[type] = Number(value);
  }
  return out;
}

/** Milliseconds `timeZone` is ahead of UTC at `instant`. */
export function offsetMs(instant, timeZone) {
  const w = wallClock(instant, timeZone);
  const asUtc = Date.UTC(w.year, w.month - 1, w.day, w.hour, w.minute, w.second);
  return asUtc - Math.floor(instant.getTime() / 1000) * 1000;
}

/**
 * The instant at which the wall clocks of `timeZone` show the given time. In a daylight-saving gap
 * (a time that never happens) the result is the instant just after the gap.
 */
export function zonedInstant(year, month, day, hour = 0, minute = 0, timeZone = "UTC") {
  const wall = Date.UTC(year, month - 1, day, hour, minute);
  let guess = wall - offsetMs(new Date(wall), timeZone);
  // One correction covers the offset changing between the guess and the answer (DST edges).
  guess = wall - offsetMs(new Date(guess), timeZone);
  return new Date(guess);
}

/** "YYYY-MM-DD" of the day `instant` falls in, in `timeZone`. */
export function localDate(instant, timeZone) {
  const w = wallClock(instant, timeZone);
  return `${w.year}-${String(w.month).padStart(2, "0")}-${String(w.day).padStart(2, "0")}`;
}

/** [start, end) of the local day "YYYY-MM-DD" in `timeZone` (23 or 25 hours on DST days). */
export function dayBounds(isoDate, timeZone) {
  const [y, m, d] = isoDate.split("-").map(Number);
  const next = new Date(Date.UTC(y, m - 1, d + 1));
  return [
    zonedInstant(y, m, d, 0, 0, timeZone),
    zonedInstant(next.getUTCFullYear(), next.getUTCMonth() + 1, next.getUTCDate(), 0, 0, timeZone),
  ];
}

/** "YYYY-MM-DD" shifted by `days`. */
export function addDays(isoDate, days) {
  const [y, m, d] = isoDate.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d + days)).toISOString().slice(0, 10);
}

/** The instant of an <input type="datetime-local"> value ("YYYY-MM-DDTHH:MM") read in `timeZone`. */
export function parseLocalInput(value, timeZone) {
  const match = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})/.exec(value || "");
  if (!match) return null;
  const [, y, mo, d, h, mi] = match.map(Number);
  return zonedInstant(y, mo, d, h, mi, timeZone);
}

/** The <input type="datetime-local"> value that shows `instant` in `timeZone`. */
export function toLocalInput(instant, timeZone) {
  const w = wallClock(instant, timeZone);
  const two = (n) => String(n).padStart(2, "0");
  return `${w.year}-${two(w.month)}-${two(w.day)}T${two(w.hour)}:${two(w.minute)}`;
}

/** "10:00" when `instant` is on the same local day as `reference`, else "Tue 10:00" or "12 Mar 10:00". */
export function formatWhen(instant, timeZone, reference = new Date()) {
  const time = new Intl.DateTimeFormat("en-GB", { timeZone, hour: "2-digit", minute: "2-digit" }).format(instant);
  const days = (instant - reference) / 86_400_000;
  if (localDate(instant, timeZone) === localDate(reference, timeZone)) return time;
  if (days > 0 && days < 6) {
    return `${new Intl.DateTimeFormat("en-GB", { timeZone, weekday: "short" }).format(instant)} ${time}`;
  }
  return `${new Intl.DateTimeFormat("en-GB", { timeZone, day: "numeric", month: "short" }).format(instant)} ${time}`;
}

/** "12 Mar 2026, 10:00" in `timeZone`. */
export function formatDateTime(instant, timeZone) {
  return new Intl.DateTimeFormat("en-GB", {
    timeZone, day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit",
  }).format(instant);
}

/** "2 h 05 min", "45 s". */
export function formatDuration(seconds) {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${String(m).padStart(2, "0")} min` : `${m} min`;
}

export function isValidZone(timeZone) {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone });
    return true;
  } catch {
    return false;
  }
}
