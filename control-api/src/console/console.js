// The console's only script (served from this origin; the Content-Security-Policy allows no
// other). An element with `data-refresh="URL"` has its contents replaced every second by the
// HTML fragment the server renders at URL; the server escapes every value in it.
"use strict";
for (const el of document.querySelectorAll("[data-refresh]")) {
  const url = el.dataset.refresh;
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      // Signed out (redirected to the sign-in form), or the token lost this page's scope.
      if (r.status === 401 || r.status === 403 || r.redirected) {
        location.assign("/ui/login");
      } else if (r.ok) {
        el.innerHTML = await r.text();
        el.dataset.refreshedAt = String(Date.now());
      }
    } catch (_) {
      // control-api unreachable: keep what is shown; the next tick tries again.
    } finally {
      busy = false;
    }
  }, 1000);
}
