// GET /reports/offline-ranking as a bar chart of the top rows and the full table; the same query with
// Accept: text/csv downloaded as a file (fetch with the token, then a blob: a plain link cannot send
// the Authorization header).

import { api, escapeHtml, renderHeader, requireUser } from "./session.js";
import { addDays, formatDuration, localDate } from "./zoned.js";

const CHART_ROWS = 25;
const LOCAL_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone;

const user = requireUser(["sales", "admin"]);
if (user) start(user);

function start(user) {
  renderHeader(user);
  const form = document.getElementById("query");
  const error = document.getElementById("error");
  const tbody = document.querySelector("#table tbody");
  const groups = new Set();
  let chart = null;

  function applyPreset() {
    const days = form.preset.value;
    if (days === "") return;
    const today = localDate(new Date(), LOCAL_ZONE);
    const n = Number(days);
    form.to.value = n === 1 ? addDays(today, -1) : today;
    form.from.value = n <= 1 ? form.to.value : addDays(today, -(n - 1));
  }

  function query() {
    const params = new URLSearchParams({ from: form.from.value, to: form.to.value, limit: form.limit.value || "100" });
    if (form.group.value.trim()) params.set("group", form.group.value.trim());
    return params;
  }

  function drawChart(rows) {
    const top = rows.slice(0, CHART_ROWS);
    const data = {
      labels: top.map((r) => r.restaurant_id),
      datasets: [{
        label: "hours offline", data: top.map((r) => r.offline_seconds / 3600), backgroundColor: "#d64545", maxBarThickness: 24,
      }],
    };
    document.getElementById("chart-title").textContent =
      `Top ${top.length} restaurants by offline time (${form.from.value} – ${form.to.value}${form.group.value ? `, group ${form.group.value}` : ""})`;
    if (chart) {
      chart.data = data;
      chart.update();
      return;
    }
    chart = new window.Chart(document.getElementById("chart"), {
      type: "bar",
      data,
      options: {
        indexAxis: "y",
        maintainAspectRatio: false,
        animation: false,
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { label: (ctx) => formatDuration(ctx.parsed.x * 3600) } },
        },
        scales: { x: { title: { display: true, text: "hours offline (disconnected inside opening hours)" } } },
        onClick: (_event, elements) => {
          if (elements.length) location.assign(`/ui/restaurants/${encodeURIComponent(chart.data.labels[elements[0].index])}`);
        },
      },
    });
  }

  function drawTable(rows) {
    tbody.innerHTML =
      rows
        .map(
          (r) => `<tr><td class="num">${r.rank}</td>
            <td><a href="/ui/restaurants/${encodeURIComponent(r.restaurant_id)}">${escapeHtml(r.restaurant_id)}</a></td>
            <td>${escapeHtml(r.group ?? "")}</td><td class="num">${formatDuration(r.offline_seconds)}</td>
            <td class="num">${Math.round(r.offline_seconds).toLocaleString("en")}</td></tr>`,
        )
        .join("") || `<tr><td colspan="5" class="muted">No restaurant was offline in this period.</td></tr>`;
  }

  async function show() {
    error.textContent = "";
    const params = query();
    history.replaceState(null, "", `${location.pathname}?${params}`);
    try {
      const body = await api(`/reports/offline-ranking?${params}`);
      for (const row of body.rows) if (row.group && !groups.has(row.group)) {
        groups.add(row.group);
        document.getElementById("groups").append(new Option(row.group));
      }
      drawChart(body.rows);
      drawTable(body.rows);
    } catch (exc) {
      error.textContent = exc.message;
    }
  }

  async function downloadCsv() {
    error.textContent = "";
    try {
      const response = await api(`/reports/offline-ranking?${query()}`, { accept: "text/csv" });
      const blob = await response.blob();
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      const group = form.group.value.trim() ? `_${form.group.value.trim()}` : "";
      link.download = `offline-ranking_${form.from.value}_${form.to.value}${group}.csv`;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    } catch (exc) {
      error.textContent = exc.message;
    }
  }

  const initial = new URLSearchParams(location.search);
  if (initial.get("from") && initial.get("to")) {
    form.preset.value = "";
    form.from.value = initial.get("from");
    form.to.value = initial.get("to");
    form.group.value = initial.get("group") || "";
    form.limit.value = initial.get("limit") || "100";
  } else {
    applyPreset();
  }
  form.preset.addEventListener("change", applyPreset);
  for (const name of ["from", "to"]) form[name].addEventListener("input", () => (form.preset.value = ""));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    show();
  });
  document.getElementById("csv").addEventListener("click", () => {
    if (form.reportValidity()) downloadCsv();
  });
  show();
}
