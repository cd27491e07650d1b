// Pending approvals, live: the table is rebuilt from /api/approvals every
// second. Values go in with textContent only (never as markup).
(function () {
  "use strict";
  var table = document.querySelector("#approvals tbody");
  var none = document.getElementById("none");
  var meta = document.querySelector('meta[name="csrf"]');
  if (!table || !meta) { return; }
  var csrf = meta.getAttribute("content");

  function cell(tr, text, small) {
    var td = document.createElement("td");
    var pre = document.createElement(small === "pre" ? "pre" : "span");
    pre.textContent = text;
    td.appendChild(pre);
    if (small && small !== "pre") {
      td.appendChild(document.createElement("br"));
      var s = document.createElement("small");
      s.textContent = small;
      td.appendChild(s);
    }
    tr.appendChild(td);
    return td;
  }

  function decideCell(tr, r) {
    var td = document.createElement("td");
    if (!r.can_decide) {
      var s = document.createElement("span");
      s.className = "cannot";
      s.textContent = "only group " + r.group + " decides";
      td.appendChild(s);
      tr.appendChild(td);
      return;
    }
    var f = document.createElement("form");
    f.method = "post";
    f.action = "/approvals/" + encodeURIComponent(r.id);
    f.className = "decide";
    var t = document.createElement("input");
    t.type = "hidden"; t.name = "csrf"; t.value = csrf;
    var reason = document.createElement("textarea");
    reason.name = "reason"; reason.required = true; reason.maxLength = 2000;
    reason.placeholder = "Reason (required)";
    f.appendChild(t); f.appendChild(reason);
    [["approve", "Approve"], ["deny", "Deny"]].forEach(function (b) {
      var btn = document.createElement("button");
      btn.type = "submit"; btn.name = "decision"; btn.value = b[0];
      btn.className = b[0]; btn.textContent = b[1];
      f.appendChild(btn);
    });
    td.appendChild(f);
    tr.appendChild(td);
  }

  function render(list) {
    var typing = document.activeElement && document.activeElement.tagName === "TEXTAREA";
    var shown = Array.prototype.map.call(table.rows, function (r) { return r.dataset.id; });
    var ids = list.map(function (r) { return r.id; });
    // Leave the table alone while someone types a reason into it, unless
    // requests came or went.
    if (typing && shown.join() === ids.join()) { return; }
    var keep = {};
    Array.prototype.forEach.call(table.rows, function (r) { keep[r.dataset.id] = r; });
    var body = document.createDocumentFragment();
    list.forEach(function (r) {
      if (keep[r.id]) { body.appendChild(keep[r.id]); return; }
      var tr = document.createElement("tr");
      tr.dataset.id = r.id;
      cell(tr, r.agent, "pid " + r.pid);
      cell(tr, r.job);
      cell(tr, r.target);
      cell(tr, r.action);
      cell(tr, r.text, "pre");
      cell(tr, r.policy, r.reason);
      cell(tr, r.group);
      decideCell(tr, r);
      body.appendChild(tr);
    });
    while (table.firstChild) { table.removeChild(table.firstChild); }
    table.appendChild(body);
    if (none) { none.hidden = list.length > 0; }
  }

  function poll() {
    fetch("/api/approvals", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (list) { if (list) { render(list); } })
      .catch(function () {})
      .then(function () { setTimeout(poll, 1000); });
  }
  setTimeout(poll, 1000);
})();
