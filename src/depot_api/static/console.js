// depot-api console: a part of a page marked data-live-url (a running build's steps) fetches
// itself again every two seconds and is swapped in place, until the server answers with a
// part that is no longer live (the build ended). A form marked data-confirm (revoking a
// token, removing a trust policy, stopping sharing) asks its question first and is not sent
// if declined. The server renders and escapes the HTML; the page's Content-Security-Policy
// lets no inline script run, here or anywhere.
"use strict";

(function () {
  const INTERVAL_MS = 2000;

  // Which <details> the reader has opened or closed, by their data-key, kept across updates.
  function openState(region) {
    const state = new Map();
    for (const details of region.querySelectorAll("details[data-key]")) {
      state.set(details.dataset.key, details.open);
    }
    return state;
  }

  // The address a region fetches, if it is one of this console's own: whatever a fragment's
  // markup said, the script never asks another origin (nor sends this page's cookies there).
  function liveUrl(region) {
    let url;
    try {
      url = new URL(region.dataset.liveUrl, window.location.href);
    } catch (error) {
      return null;
    }
    const ours = url.origin === window.location.origin && url.pathname.startsWith("/console/");
    return ours ? url : null;
  }

  // Only the same part of the page replaces it: an answer that is something else (a whole
  // page, a proxy's sign-in form) is not put in its place.
  function samePart(fresh, region) {
    return (
      fresh !== null &&
      fresh.tagName === region.tagName &&
      fresh.className === region.className
    );
  }

  function schedule(region) {
    if (liveUrl(region) !== null) {
      window.setTimeout(() => refresh(region), INTERVAL_MS);
    }
  }

  async function refresh(region) {
    let response;
    try {
      response = await fetch(liveUrl(region), {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
      });
    } catch (error) {
      schedule(region); // the server is away for a moment: try again
      return;
    }
    if (response.status === 401) {
      window.location.reload(); // signed out: the page itself goes to sign-in
      return;
    }
    if (response.status >= 400 && response.status < 500) {
      return; // gone or no longer ours (a deleted project): stop asking, keep what is shown
    }
    if (!response.ok) {
      schedule(region); // the server is busy or restarting: try again
      return;
    }
    const template = document.createElement("template");
    template.innerHTML = await response.text();
    const fresh = template.content.firstElementChild;
    if (!samePart(fresh, region)) {
      schedule(region); // not this part: keep what is shown, and ask again
      return;
    }
    const state = openState(region);
    for (const details of fresh.querySelectorAll("details[data-key]")) {
      if (state.has(details.dataset.key)) {
        details.open = state.get(details.dataset.key);
      }
    }
    region.replaceWith(fresh);
    if (fresh.dataset.liveUrl) {
      schedule(fresh); // no-op for an address not this console's own
    }
  }

  for (const region of document.querySelectorAll("[data-live-url]")) {
    schedule(region);
  }

  // One listener for every such form, also those a live update swaps in. Without this script
  // the forms are sent as they are: the question is a convenience, not a safeguard.
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || form.dataset.confirm === undefined) {
      return;
    }
    if (!window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });
})();
