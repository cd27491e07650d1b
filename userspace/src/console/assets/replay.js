// The session page's terminal player: the cast's URL comes from the page
// (data-cast), nothing is inline. Buttons in the timeline seek the player
// to their event.
(function () {
  "use strict";
  var el = document.getElementById("player");
  if (!el || typeof AsciinemaPlayer === "undefined") { return; }
  var player = AsciinemaPlayer.create(el.getAttribute("data-cast"), el, {
    // Fetched with the page, so the markers (decisions) and the timeline's
    // buttons work before the first play.
    preload: true,
    fit: "width",
    terminalFontSize: "small"
  });
  var buttons = document.querySelectorAll("button[data-seek]");
  Array.prototype.forEach.call(buttons, function (b) {
    b.addEventListener("click", function () {
      var at = parseFloat(b.getAttribute("data-seek"));
      if (isFinite(at)) {
        el.scrollIntoView();
        player.seek(at);
      }
    });
  });
})();
