// Tidings dashboard: live campaign progress and results (Server-Sent Events) and the contact picker.
// No inline scripts (the Content-Security-Policy forbids them); everything here is progressive:
// without it the pages still work, they just do not move by themselves.
(() => {
  "use strict";

  const csrfToken = () => document.querySelector('meta[name="csrf-token"]')?.content;
  const formatCount = (n) => n.toLocaleString("en").replace(/,/g, "\u202f");

  // htmx requests carry the session's CSRF token too.
  document.addEventListener("htmx:configRequest", (event) => {
    const token = csrfToken();
    if (token) event.detail.headers["X-CSRF-Token"] = token;
  });

  // Forms that ask before doing something that cannot be undone.
  document.addEventListener("submit", (event) => {
    const question = event.target.dataset?.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });

  function applyFigures(figures) {
    document.querySelectorAll(`[data-campaign="${figures.id}"]`).forEach((root) => {
      root.querySelectorAll("[data-field]").forEach((element) => {
        const name = element.dataset.field;
        if (name === "status") {
          element.dataset.status = figures.status;
          element.querySelector("[data-symbol]").textContent = figures.status_symbol;
          element.querySelector("[data-text]").textContent = figures.status;
        } else if (name in figures) {
          const value = figures[name];
          element.textContent = typeof value === "number" ? formatCount(value) : value || "—";
        }
      });
      root.querySelectorAll('[role="progressbar"]').forEach((bar) => {
        bar.setAttribute("aria-valuenow", String(figures.percentage));
        bar.setAttribute("aria-valuetext", figures.percentage_text);
        bar.dataset.status = figures.status;
        bar.querySelector(".progress-fill").style.width = `${figures.percentage}%`;
      });
      root.querySelectorAll("form[data-when]").forEach((form) => {
        const allowed = form.dataset.when.split(" ").includes(figures.status);
        form.hidden = !allowed || ("needsFailed" in form.dataset && figures.failed === 0);
      });
    });
  }

  // A campaign's results, re-rendered by the server when they moved: swapped in whole, keeping
  // open what the reader opened (the figures' tables) and the keyboard focus where it was.
  function applyEngagement(update) {
    const section = document.querySelector(`[data-engagement-for="${update.id}"]`);
    if (!section) return;
    const summaries = () => Array.from(section.querySelectorAll("details > summary"));
    const opened = summaries().map((summary) => summary.parentElement.open);
    const focused = summaries().indexOf(document.activeElement);
    section.innerHTML = update.html;
    summaries().forEach((summary, i) => {
      if (opened[i]) summary.parentElement.open = true;
      if (i === focused) summary.focus();
    });
  }

  // The stream is open only while the page is in view: a tab in the background costs the
  // server nothing, and one coming back gets the current figures at once (the stream's first).
  function followProgress() {
    const holder = document.querySelector("[data-live-ids]");
    const ids = holder?.dataset.liveIds;
    if (!ids || !window.EventSource) return;
    const engagement = holder.dataset.engagement;
    const query = `ids=${encodeURIComponent(ids)}` + (engagement ? `&engagement=${encodeURIComponent(engagement)}` : "");
    let source = null;
    let ended = false;
    const stop = () => {
      source?.close();
      source = null;
    };
    const start = () => {
      if (source || ended) return;
      source = new EventSource(`/events/campaigns?${query}`);
      source.addEventListener("progress", (event) => JSON.parse(event.data).forEach(applyFigures));
      source.addEventListener("engagement", (event) => applyEngagement(JSON.parse(event.data)));
      source.addEventListener("done", () => {
        ended = true;
        stop();
      });
      source.addEventListener("signout", () => {
        ended = true;
        stop();
        window.location.assign("/login");
      });
    };
    document.addEventListener("visibilitychange", () => (document.hidden ? stop() : start()));
    window.addEventListener("pagehide", stop);
    if (!document.hidden) start();
  }

  function setUpPicker() {
    const picker = document.getElementById("contact-picker");
    if (!picker) return;
    const counter = document.getElementById("picked-count");
    const recount = () => {
      const ticked = picker.querySelectorAll('input[type="checkbox"][name="contact_ids"]:checked').length;
      const hidden = picker.querySelectorAll('input[type="hidden"][name="contact_ids"]').length;
      counter.textContent = `${ticked + hidden} selected`;
    };
    picker.addEventListener("change", recount);
    document.body.addEventListener("htmx:afterSettle", recount);
    picker.querySelectorAll("[data-pick]").forEach((button) => {
      button.addEventListener("click", () => {
        const all = button.dataset.pick === "all";
        picker.querySelectorAll('input[type="checkbox"][name="contact_ids"]').forEach((box) => {
          box.checked = all;
        });
        if (!all) picker.querySelectorAll('input[type="hidden"][name="contact_ids"]').forEach((input) => input.remove());
        recount();
      });
    });
    // Enter in the search box searches; it must not submit the whole campaign form.
    picker.querySelectorAll("[data-no-submit]").forEach((input) => {
      input.addEventListener("keydown", (event) => {
        if (event.key === "Enter") event.preventDefault();
      });
    });
    recount();
  }

  // The segment builder: add and remove rows; the count (htmx) follows every change.
  function setUpSegmentBuilder() {
    const builder = document.getElementById("segment-builder");
    if (!builder) return;
    const rows = builder.querySelector("#segment-rows");
    const changed = () => document.body.dispatchEvent(new Event("segment-rows-changed"));
    const renumber = () => {
      rows.querySelectorAll("[data-segment-row]").forEach((row, i) => {
        row.querySelectorAll("[aria-label]").forEach((element) => {
          element.setAttribute("aria-label", element.getAttribute("aria-label").replace(/\d+$/, String(i + 1)));
        });
      });
    };
    builder.querySelector("[data-add-row]")?.addEventListener("click", () => {
      const last = rows.querySelector("[data-segment-row]:last-child");
      if (!last) return;
      const row = last.cloneNode(true);
      row.querySelectorAll("input").forEach((input) => { input.value = ""; });
      row.querySelectorAll("select").forEach((select) => { select.selectedIndex = 0; });
      rows.appendChild(row);
      renumber();
      row.querySelector("select")?.focus();
    });
    rows.addEventListener("click", (event) => {
      const button = event.target.closest("[data-remove-row]");
      if (!button) return;
      const row = button.closest("[data-segment-row]");
      if (rows.querySelectorAll("[data-segment-row]").length > 1) {
        row.remove();
      } else {
        row.querySelectorAll("input").forEach((input) => { input.value = ""; });
        row.querySelectorAll("select").forEach((select) => { select.selectedIndex = 0; });
      }
      renumber();
      changed();
    });
    // Enter in a value box must not submit the whole campaign form.
    rows.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && event.target.matches("[data-no-submit]")) event.preventDefault();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    followProgress();
    setUpPicker();
    setUpSegmentBuilder();
  });
})();
