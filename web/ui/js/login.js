// POST /auth/token (OAuth2 password form); a restaurant goes to its client, sales/admin to the dashboard.

import { currentUser, homeFor, signIn } from "./session.js";

const form = document.getElementById("login");
const error = document.getElementById("error");

/** Only same-site paths under /ui: a crafted ?next= must not send the user elsewhere. */
function nextFor(role) {
  const next = new URLSearchParams(location.search).get("next");
  const home = homeFor(role);
  if (!next || !next.startsWith("/ui/") || next.startsWith("//")) return home;
  // A restaurant token cannot use the sales pages and the other way round.
  const restaurantPage = next.startsWith("/ui/client");
  return restaurantPage === (role === "restaurant") ? next : home;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  const button = form.querySelector("button");
  button.disabled = true;
  const username = form.username.value.trim();
  const password = form.password.value;
  try {
    const response = await fetch("/auth/token", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
      body: new URLSearchParams({ grant_type: "password", username, password }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      error.textContent = response.status === 401 ? "Wrong id or secret." : body.detail || `HTTP ${response.status}`;
      return;
    }
    signIn(body.access_token, null);
    const user = currentUser();
    if (!user) {
      error.textContent = "The server sent a token this page cannot read.";
      return;
    }
    // The restaurant's secret is also its MQTT password: the client page needs it for the broker.
    if (user.role === "restaurant") signIn(body.access_token, password);
    location.assign(nextFor(user.role));
  } catch (exc) {
    error.textContent = `Cannot reach the server: ${exc.message}`;
  } finally {
    button.disabled = false;
  }
});

// Already signed in (e.g. the back button): straight on.
const user = currentUser();
if (user && new URLSearchParams(location.search).get("next") === null) location.replace(homeFor(user.role));
