// A restaurant's unavailabilities: the history (cancelled ones included) and, for whoever may manage
// them (the restaurant itself, admin), a form to schedule one and a cancel button on each that is
// not over. Times are read and shown on the restaurant's own clock.

import { api, escapeHtml } from "./session.js";
import { REASONS, capitalised, reasonWords } from "./status-text.js";
import { formatDateTime, parseLocalInput, toLocalInput } from "./zoned.js";

const FORM = `
<form class="schedule-form">
  <label>Reason <select name="reason">${REASONS.map((r) => `<option value="${r}">${capitalised(reasonWords(r))}</option>`).join("")}</select></label>
  <label class="start-now"><input type="checkbox" name="now" checked> starts now</label>
  <label>Start <input type="datetime-local" name="start" disabled></label>
  <label>End <input type="datetime-local" name="end" required></label>
  <label>&nbsp;<span class="row">
    <button type="button" data-minutes="30">30 min</button><button type="button" data-minutes="60">1 h</button>
    <button type="button" data-minutes="120">2 h</button><button type="button" data-minutes="1440">1 day</button>
  </span></label>
  <label>Note <input name="note" maxlength="500" placeholder="optional"></label>
  <button class="primary" type="submit">Schedule</button>
</form>
<div class="error" role="alert"></div>`;

export class UnavailabilityPanel {
  /** `onChange()` runs after a schedule or a cancel (the status will change soon after). */
  constructor(root, { rid, timeZone, canManage, onChange = () => {} }) {
    this.root = root;
    this.rid = rid;
    this.timeZone = timeZone;
    this.canManage = canManage;
    this.onChange = onChange;
    root.innerHTML = `${canManage ? FORM : ""}
      <table class="history"><thead><tr><th>Reason</th><th>From</th><th>Until</th><th>Note</th><th>State</th><th>By</th><th></th></tr></thead>
      <tbody><tr><td colspan="7" class="muted">Loading…</td></tr></tbody></table>`;
    this.tbody = root.querySelector("tbody");
    this.error = root.querySelector(".error");
    if (canManage) this._wireForm(root.querySelector("form"));
    root.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-cancel]");
      if (button) this._cancel(button);
    });
  }

  _wireForm(form) {
    const startNow = () => form.now.checked;
    form.now.addEventListener("change", () => {
      form.start.disabled = startNow();
      if (!startNow() && !form.start.value) form.start.value = toLocalInput(new Date(), this.timeZone);
    });
    form.addEventListener("click", (event) => {
      const minutes = Number(event.target.dataset?.minutes);
      if (!minutes) return;
      const base = startNow() ? new Date() : parseLocalInput(form.start.value, this.timeZone) || new Date();
      form.end.value = toLocalInput(new Date(base.getTime() + minutes * 60_000), this.timeZone);
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      this.error.textContent = "";
      const end = parseLocalInput(form.end.value, this.timeZone);
      const start = startNow() ? null : parseLocalInput(form.start.value, this.timeZone);
      if (!end || (!startNow() && !start)) {
        this.error.textContent = "Give an end (and a start, unless it starts now).";
        return;
      }
      const body = { reason: form.reason.value, end: end.toISOString(), note: form.note.value.trim() || null };
      if (start) body.start = start.toISOString();
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        await api(`/restaurants/${encodeURIComponent(this.rid)}/unavailabilities`, { method: "POST", body });
        form.note.value = "";
        form.end.value = "";
        await this.refresh();
        this.onChange();
      } catch (exc) {
        this.error.textContent = exc.message;
      } finally {
        button.disabled = false;
      }
    });
  }

  async _cancel(button) {
    if (!confirm("Cancel this unavailability?")) return;
    button.disabled = true;
    try {
      await api(`/restaurants/${encodeURIComponent(this.rid)}/unavailabilities/${encodeURIComponent(button.dataset.cancel)}`, {
        method: "DELETE",
      });
      await this.refresh();
      this.onChange();
    } catch (exc) {
      if (this.error) this.error.textContent = exc.message;
      else alert(exc.message);
      button.disabled = false;
    }
  }

  async refresh() {
    try {
      const { items } = await api(`/restaurants/${encodeURIComponent(this.rid)}/unavailabilities`);
      this._render(items);
    } catch (exc) {
      this.tbody.innerHTML = `<tr><td colspan="7" class="error">${escapeHtml(exc.message)}</td></tr>`;
    }
  }

  _render(items) {
    const when = (iso) => (iso ? formatDateTime(new Date(iso), this.timeZone) : "");
    this.tbody.innerHTML =
      items
        .map((u) => {
          const open = u.state === "scheduled" || u.state === "active";
          const cancel = this.canManage && open ? `<button type="button" data-cancel="${escapeHtml(u.id)}">Cancel</button>` : "";
          const cancelled = u.cancelled_at
            ? `<div class="muted">cancelled ${escapeHtml(when(u.cancelled_at))}${u.cancelled_by ? ` by ${escapeHtml(u.cancelled_by)}` : ""}</div>`
            : "";
          return `<tr data-id="${escapeHtml(u.id)}" data-state="${escapeHtml(u.state)}">
            <td>${escapeHtml(capitalised(reasonWords(u.reason)))}</td>
            <td>${escapeHtml(when(u.start))}</td><td>${escapeHtml(when(u.end))}</td>
            <td>${escapeHtml(u.note || "")}</td>
            <td><span class="pill state-${escapeHtml(u.state)}">${escapeHtml(u.state)}</span>${cancelled}</td>
            <td>${escapeHtml(u.created_by || "")}</td><td>${cancel}</td></tr>`;
        })
        .join("") || `<tr><td colspan="7" class="muted">No unavailability yet.</td></tr>`;
  }
}
