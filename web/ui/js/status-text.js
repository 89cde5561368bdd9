// A derived status (DESIGN.md §5) in words and in one of four kinds, the same on every page.

import { formatWhen } from "./zoned.js";

export const KINDS = ["online", "closed", "unavailable", "disconnected"];

export const KIND_LABEL = {
  online: "Online",
  closed: "Closed",
  unavailable: "Unavailable",
  disconnected: "Disconnected",
};

export const REASONS = [
  "LACK_OF_DELIVERY_STAFF",
  "CONNECTION_ISSUES",
  "OVERLOADED_OFFLINE_ORDERS",
  "HOLIDAY",
  "OTHER",
];

/** "LACK_OF_DELIVERY_STAFF" → "lack of delivery staff". */
export function reasonWords(reason) {
  return String(reason || "").toLowerCase().replace(/_/g, " ");
}

export function capitalised(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : text;
}

/** online | closed | unavailable | disconnected, from {online, reason}. */
export function statusKind(status) {
  if (!status) return "disconnected";
  if (status.online) return "online";
  if (status.reason === "CLOSED") return "closed";
  if (status.reason === "UNAVAILABLE") return "unavailable";
  return "disconnected";
}

/**
 * "Online", "Closed until 10:00", "Unavailable — holiday until Tue 18:00", "Disconnected", with
 * times on the restaurant's own clock (`timeZone`).
 */
export function describeStatus(status, timeZone, now = new Date()) {
  const kind = statusKind(status);
  const until = status && status.until ? ` until ${formatWhen(new Date(status.until), timeZone, now)}` : "";
  switch (kind) {
    case "online":
      return "Online";
    case "closed":
      return `Closed${until}`;
    case "unavailable":
      return `Unavailable${status.detail ? ` — ${reasonWords(status.detail)}` : ""}${until}`;
    default:
      return "Disconnected";
  }
}

/** Short tile text: "online", "closed", "holiday", "disconnected". */
export function shortLabel(status) {
  const kind = statusKind(status);
  return kind === "unavailable" && status.detail ? reasonWords(status.detail) : kind;
}
