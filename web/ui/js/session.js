// The signed-in user of this tab: the bearer token (sessionStorage: gone when the tab closes), the
// API calls made with it, the page header, and logout.

const KEY = { token: "presence.token", secret: "presence.secret" };

/** The token's claims (the API's JWT: sub, role, exp, restaurant_id); null if absent or expired. */
export function currentUser() {
  const token = sessionStorage.getItem(KEY.token);
  if (!token) return null;
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    if (typeof claims.exp === "number" && claims.exp * 1000 <= Date.now()) return null;
    return { token, role: claims.role, subject: claims.sub, restaurantId: claims.restaurant_id ?? null };
  } catch {
    return null;
  }
}

export function homeFor(role) {
  return role === "restaurant" ? "/ui/client" : "/ui/dashboard";
}

export function signIn(token, secret) {
  sessionStorage.setItem(KEY.token, token);
  // A restaurant's secret is its MQTT password: the token cannot log into the broker. It lives only
  // as long as the tab, like the token.
  if (secret) sessionStorage.setItem(KEY.secret, secret);
  else sessionStorage.removeItem(KEY.secret);
}

export function restaurantSecret() {
  return sessionStorage.getItem(KEY.secret);
}

export function signOut() {
  sessionStorage.removeItem(KEY.token);
  sessionStorage.removeItem(KEY.secret);
}

function toLogin() {
  const next = location.pathname + location.search;
  location.replace(`/ui/login?next=${encodeURIComponent(next)}`);
}

/** The user if their role is one of `roles`, else off to the login page (and null). */
export function requireUser(roles) {
  const user = currentUser();
  if (!user) {
    toLogin();
    return null;
  }
  if (!roles.includes(user.role)) {
    location.replace(homeFor(user.role));
    return null;
  }
  return user;
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** The message of a FastAPI error body: its `detail` string, or the first validation message. */
function describe(status, body) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail) && detail.length) {
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  return `HTTP ${status}`;
}

/** fetch() with the bearer token; JSON in and out by default; a 401 sends the user to log in. */
export async function api(path, { method = "GET", body, accept = "application/json" } = {}) {
  const user = currentUser();
  const headers = { Accept: accept };
  if (user) headers.Authorization = `Bearer ${user.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) {
    signOut();
    toLogin();
    throw new ApiError(401, "signed out");
  }
  if (!response.ok) {
    const payload = await response.json().catch(() => null);
    throw new ApiError(response.status, describe(response.status, payload));
  }
  if (accept !== "application/json") return response;
  return response.status === 204 ? null : response.json();
}

/**
 * The header every page shares: links for the role, who is signed in, and logout. `beforeLogout`
 * runs first (the restaurant client sends its graceful offline there).
 */
export function renderHeader(user, { beforeLogout } = {}) {
  const header = document.querySelector("header.top");
  const links =
    user.role === "restaurant"
      ? [["/ui/client", "My restaurant"]]
      : [["/ui/dashboard", "Dashboard"], ["/ui/ranking", "Offline ranking"]];
  const nav = links
    .map(([href, label]) => `<a href="${href}"${location.pathname === href ? ' aria-current="page"' : ""}>${label}</a>`)
    .join("");
  header.innerHTML = `<span class="brand">Restaurant presence</span><nav>${nav}</nav>
    <span class="who"></span><button type="button" class="logout">Log out</button>`;
  header.querySelector(".who").textContent = `${user.subject} (${user.role})`;
  header.querySelector(".logout").addEventListener("click", async (event) => {
    event.target.disabled = true;
    try {
      if (beforeLogout) await beforeLogout();
    } finally {
      signOut();
      location.assign("/ui/login");
    }
  });
}

export function escapeHtml(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
