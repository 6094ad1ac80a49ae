// devart console: live parts fed by the server-sent event stream that htmx's SSE extension holds open
// (it reconnects after a drop), an auto-refresh switch, and the live, searchable task log.
(function () {
  "use strict";
  var body = document.body;
  var KEY = "devart.live";
  var live = localStorage.getItem(KEY) !== "off";
  var delay = Number(body.dataset.liveMs || 300);
  var pending = new Map();
  var opened = false;
  var missed = 0;  // changes heard while auto-refresh is off

  function say(text) {
    var el = document.getElementById("live-state");
    if (el) { el.textContent = text; }
  }

  // Refresh an element at most every `delay` ms and always after the last change heard of.
  function schedule(el) {
    if (pending.has(el)) { return; }
    pending.set(el, setTimeout(function () {
      pending.delete(el);
      if (document.body.contains(el)) { htmx.trigger(el, "devart:refresh"); }
    }, delay));
  }

  function liveElements() { return Array.prototype.slice.call(document.querySelectorAll("[data-live]")); }

  function refreshAll() { liveElements().forEach(schedule); }

  function onEvent(kind, data) {
    if (!live) {
      missed++;
      say("paused, " + missed + (missed === 1 ? " change" : " changes") + " not shown");
      return;
    }
    liveElements().forEach(function (el) {
      if (el.dataset.live.split(" ").indexOf(kind) < 0) { return; }
      var match = el.dataset.liveMatch;
      if (match && data.indexOf(match) < 0) { return; }
      schedule(el);
    });
  }

  var toggle = document.getElementById("live-toggle");
  if (toggle) {
    toggle.checked = live;
    toggle.addEventListener("change", function () {
      live = toggle.checked;
      localStorage.setItem(KEY, live ? "on" : "off");
      missed = 0;
      say(live ? "live" : "paused");
      if (live) { refreshAll(); }
    });
  }

  // Parts derived from time (heartbeats: an agent going silent sends no event) refresh on a period too.
  document.querySelectorAll("[data-live-every]").forEach(function (el) {
    setInterval(function () { if (live) { schedule(el); } }, Number(el.dataset.liveEvery));
  });

  body.addEventListener("htmx:sseOpen", function (evt) {
    var source = evt.detail.source;
    var kinds = {};
    liveElements().forEach(function (el) { el.dataset.live.split(" ").forEach(function (k) { kinds[k] = true; }); });
    Object.keys(kinds).forEach(function (kind) {
      source.addEventListener(kind, function (e) { onEvent(kind, e.data); });
    });
    if (opened && live) { refreshAll(); }  // back after a drop: catch up on what was missed
    opened = true;
    say(live ? "live" : "paused");
  });
  body.addEventListener("htmx:sseError", function () { say("reconnecting…"); });

  // The task log: its own stream, resumed after the last line received (Last-Event-ID).
  var lines = document.getElementById("log-lines");
  if (lines) {
    var search = document.getElementById("log-search");
    var count = document.getElementById("log-count");
    var streamState = document.getElementById("log-stream-state");
    var lastId = null;
    var ended = false;

    var matches = function (li) {
      var q = search.value.trim().toLowerCase();
      return !q || li.querySelector(".text").textContent.toLowerCase().indexOf(q) >= 0;
    };
    var filter = function () {
      var shown = 0;
      var all = lines.children;
      for (var i = 0; i < all.length; i++) {
        var ok = matches(all[i]);
        all[i].hidden = !ok;
        if (ok) { shown++; }
      }
      count.textContent = search.value.trim() ? shown + " of " + all.length + " lines match" : all.length + " lines";
    };
    search.addEventListener("input", filter);

    var append = function (line) {
      var li = document.createElement("li");
      li.className = "log-" + line.stream;
      var ts = document.createElement("span");
      ts.className = "ts";
      ts.textContent = line.ts.slice(11, 23) + " #" + line.attempt + " ";
      var text = document.createElement("span");
      text.className = "text";
      text.textContent = line.line;
      li.appendChild(ts);
      li.appendChild(text);
      li.hidden = !matches(li);
      lines.appendChild(li);
    };

    var connect = function () {
      var source = new EventSource(lines.dataset.stream + (lastId ? "?after=" + encodeURIComponent(lastId) : ""));
      source.addEventListener("log", function (e) {
        if (e.lastEventId) { lastId = e.lastEventId; }
        append(JSON.parse(e.data));
        filter();
      });
      source.addEventListener("end", function () {
        ended = true;
        source.close();
        streamState.textContent = "task ended: every line is shown";
      });
      source.onopen = function () { streamState.textContent = "streaming"; };
      source.onerror = function () {
        if (ended) { return; }
        streamState.textContent = "reconnecting…";
        // the browser retries by itself (sending Last-Event-ID); once it gives up, start again from lastId
        if (source.readyState === EventSource.CLOSED) { setTimeout(connect, 1000); }
      };
    };
    connect();
  }
})();
